"""Parity re-proven on the unit's own runtime and CPU: ``defect-edge verify-model``, and every model load.

The converter proves on its workstation that the TFLite model decides as the Keras model does. A unit runs another
build of the runtime on another CPU (aarch64, other kernels), and a quantized model's outputs can move there: seen
under emulation, the same int8 ``.tflite`` and the same inputs gave p_defect up to 0.078 apart between x86 and
aarch64. So the converter stores a small verification set beside the manifest (``NAME.verify.json`` and
``NAME.verify/``: images nearest the threshold and spread over p, at the model's input size, with Keras' p_defect of
each), and the unit runs it through its own classifier: the largest |p_unit - p_keras| must stay within the
tolerance the converter recorded. Decisions that differ from Keras (images that straddle the threshold on this
platform) are reported, not failed: near the threshold a quantized model may flip within its tolerance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge import manifest as mf
from edge.classifier import Classifier, decide
from edge.images import read_rgb
from edge.preprocess import Preprocessor


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

    @property
    def ok(self) -> bool:
        return bool(self.skipped) or self.max_abs_dp <= self.tolerance

    def line(self) -> str:
        if self.skipped:
            return f"{self.model}: not verified: {self.skipped}"
        verdict = "OK" if self.ok else "FAILED"
        text = (f"{self.model} on {self.runtime}: {verdict}: {self.count} images, max |p - p_keras| "
                f"{self.max_abs_dp:.4f} (tolerance {self.tolerance:.4f}), decisions agree on {self.agreement:.1%}")
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
    p_keras, p_unit, names = [], [], []
    for item in data["images"]:
        image_path = data["_folder"] / item["file"]
        if not image_path.is_file() or mf.sha256_file(image_path) != item["sha256"]:
            raise VerificationError(f"{clf.manifest_path.name}: verification image {item['file']} is missing or "
                                    "changed")
        p_unit.append(clf.classify(read_rgb(image_path), plain).p_defect)
        p_keras.append(float(item["p_keras"]))
        names.append(item["file"])
    pk, pu = np.asarray(p_keras), np.asarray(p_unit)
    differ = [n for n, a, b in zip(names, pk, pu, strict=True)
              if decide(float(a), m.decision)[0] != decide(float(b), m.decision)[0]]
    return VerifyReport(m.name, clf.runtime.name, count=len(names), max_abs_dp=float(np.abs(pk - pu).max()),
                        tolerance=float(data["tolerance"]["max_abs_dp"]),
                        agreement=1.0 - len(differ) / len(names), straddling=differ)
