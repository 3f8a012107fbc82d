"""Parity re-proven on the unit's own runtime and CPU: ``defect-edge verify-model``, and every model load.

The converter proves on its workstation that the TFLite model decides as the Keras model does. A unit runs another
build of the runtime on another CPU (aarch64, other kernels), and a quantized model's outputs can move there: seen
under emulation, the same int8 ``.tflite`` and the same inputs gave p_defect up to 0.17 apart between x86 and
aarch64. So the converter stores a small verification set beside the manifest (``NAME.verify.json`` and
``NAME.verify/``: images nearest the threshold and spread over p, at the model's input size, with Keras' p_defect of
each, and the converter's own TFLite p), and the unit runs it through its own classifier. Two things must hold:

- its p stays within the platform allowance of the converter's TFLite p (``p_tflite``): the same model on another
  CPU moves by rounding, or an int8 output step or so, and nothing else moves it;
- its decisions agree with Keras on the images ``far`` from the threshold, on at least :data:`FAR_AGREEMENT` of them
  on each side (Keras' good ones, and its defective ones): a confident call the model changes is not the trained
  model's. (int8 calibrated on black images said p 0.5 to everything; its old tolerance, its own worst error plus
  the allowance, let it pass everywhere. Calibrated so, the tiny test model can call nothing defective: its good
  calls all stay, so each side is counted alone.)

Other decisions that differ from Keras (images that straddle the threshold) are reported, not failed. A set written
before ``p_tflite`` is checked as it was: |p_unit - p_keras| within the tolerance it records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import manifest as mf
from core.classifier import Classifier, decide
from core.images import read_rgb
from core.preprocess import Preprocessor

# Of the confident calls on each side (Keras' p at least the set's ``far`` from the threshold), the share the unit must
# decide as Keras did. Not all: the committed demo EfficientNetB0 (int8) turns one of its 30 on this very machine.
FAR_AGREEMENT = 0.9


class VerificationError(ValueError):
    """A model that does not reproduce its verification set on this unit; the message says by how much."""


@dataclass(frozen=True)
class VerifyReport:
    model: str
    runtime: str
    count: int = 0
    max_abs_dp: float = 0.0
    tolerance: float = 0.0
    agreement: float = 1.0
    straddling: list[str] = field(default_factory=list)  # files whose decision differs from Keras here
    skipped: str = ""  # why nothing was verified (a model converted before verification sets)
    drift: float | None = None  # max |p_unit - p_tflite|; None for a set written before p_tflite
    allowance: float = 0.0  # the platform's allowance on ``drift``
    far: dict[str, int] = field(default_factory=dict)  # confident calls in the set, by Keras' decision
    far_differ: dict[str, list[str]] = field(default_factory=dict)  # of them, the files decided otherwise here

    def far_agreement(self, side: str) -> float:
        n = self.far.get(side, 0)
        return 1.0 - len(self.far_differ.get(side, [])) / n if n else 1.0

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        if self.drift is None:
            return self.max_abs_dp <= self.tolerance
        return self.drift <= self.allowance and all(self.far_agreement(side) >= FAR_AGREEMENT for side in self.far)

    def line(self) -> str:
        if self.skipped:
            return f"{self.model}: not verified: {self.skipped}"
        verdict = "OK" if self.ok else "FAILED"
        if self.drift is None:
            text = (f"{self.model} on {self.runtime}: {verdict}: {self.count} images, max |p - p_keras| "
                    f"{self.max_abs_dp:.4f} (tolerance {self.tolerance:.4f}), decisions agree on {self.agreement:.1%}"
                    " (a set without the converter's p)")
        else:
            kept = ", ".join(f"{side} {n - len(self.far_differ.get(side, []))} of {n}" for side, n in self.far.items())
            text = (f"{self.model} on {self.runtime}: {verdict}: {self.count} images, max |p - p_converter| "
                    f"{self.drift:.4f} (allowance {self.allowance:.4f}); confident calls as Keras: {kept or 'none'} "
                    f"(at least {FAR_AGREEMENT:.0%} each); max |p - p_keras| {self.max_abs_dp:.4f}, decisions agree "
                    f"on {self.agreement:.1%}")
        changed = [n for names in self.far_differ.values() for n in names]
        if changed:
            text += f"; confident calls changed: {', '.join(changed[:6])}"
        if self.straddling:
            text += f"; straddling the threshold here: {', '.join(self.straddling[:6])}"
        return text


def recorded_parity_problem(m: mf.Manifest, floor: float) -> str | None:
    """Why a model's own parity record is not good enough to run, or None. A conversion forced through with a low
    ``--min-agreement`` (int8 calibrated on five black images agreed with Keras on 0.35 of its evaluation set) still
    reproduces its own verification set, whose tolerance it set itself: the record is what tells."""
    agreement = m.parity.get("agreement")
    if not isinstance(agreement, int | float) or agreement >= floor:
        return None
    return (f"{m.name}: its conversion agreed with Keras on {agreement:.1%} of {m.parity.get('eval', 'its evaluation')}"
            f", below model.min_agreement {floor:.1%}; reconvert it, or lower the floor to run it anyway")


def confident_calls(names: list[str], p_keras: list[float], p: list[float], far: list[bool], decision: mf.Decision
                    ) -> tuple[dict[str, int], dict[str, list[str]]]:
    """The ``far`` images by Keras' decision (``good``, ``defective``), and of them those ``p`` decides otherwise."""
    sides: dict[str, int] = {}
    changed: dict[str, list[str]] = {}
    for name, pk, pu, f in zip(names, p_keras, p, far, strict=True):
        if f:
            side = "defective" if decide(pk, decision)[0] else "good"
            sides[side] = sides.get(side, 0) + 1
            changed.setdefault(side, []).extend([name] if decide(pu, decision)[0] != decide(pk, decision)[0] else [])
    return sides, changed


def load_set(manifest_path: Path, m: mf.Manifest) -> dict[str, Any]:
    """The verification set's JSON, checked against the sha256 the manifest records."""
    assert m.verification is not None
    path = mf.resolve(manifest_path, m.verification)
    if not path.is_file():
        raise VerificationError(f"{manifest_path.name}: verification set {path.name} is missing (copy it with the "
                                "model: NAME.verify.json and NAME.verify/)")
    if mf.sha256_file(path) != m.verification.sha256:
        raise VerificationError(f"{manifest_path.name}: {path.name} does not match the manifest's sha256")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data["_folder"] = path.parent
    return data


def verify(clf: Classifier) -> VerifyReport:
    """Run ``clf``'s verification set on the unit's runtime, threads and delegate, through ``clf``'s own interpreter
    (a second one would double the model's memory at start-up, and a unit's peak memory is set there). The images
    are stored at the model's size in RGB, so they are read without ROI or channel swap. Call it before ``clf``
    classifies frames on another thread: a Classifier has one owner."""
    m = clf.manifest
    if m.verification is None:
        return VerifyReport(m.name, clf.runtime.name, skipped="the manifest has no verification set (converted "
                                                               "before defect-convert wrote one)")
    data = load_set(clf.manifest_path, m)
    plain = Preprocessor(m.input)
    p_keras, p_unit, names, p_here, far = [], [], [], [], []
    for item in data["images"]:
        image_path = data["_folder"] / item["file"]
        if not image_path.is_file() or mf.sha256_file(image_path) != item["sha256"]:
            raise VerificationError(f"{clf.manifest_path.name}: verification image {item['file']} is missing or "
                                    "changed")
        p_unit.append(clf.classify(read_rgb(image_path), plain).p_defect)
        p_keras.append(float(item["p_keras"]))
        names.append(item["file"])
        p_here.append(item.get("p_tflite"))
        far.append(bool(item.get("far")))
    pk, pu = np.asarray(p_keras), np.asarray(p_unit)
    differ = [n for n, a, b in zip(names, pk, pu, strict=True)
              if decide(float(a), m.decision)[0] != decide(float(b), m.decision)[0]]
    sides, changed = confident_calls(names, p_keras, p_unit, far, m.decision)
    tolerance = data["tolerance"]
    new = all(p is not None for p in p_here)
    return VerifyReport(m.name, clf.runtime.name, count=len(names), max_abs_dp=float(np.abs(pk - pu).max()),
                        tolerance=float(tolerance["max_abs_dp"]), agreement=1.0 - len(differ) / len(names),
                        straddling=[n for n in differ if not any(n in c for c in changed.values())],
                        drift=float(np.abs(np.asarray(p_here, np.float64) - pu).max()) if new else None,
                        allowance=float(tolerance["platform_allowance"]), far=sides, far_differ=changed)
