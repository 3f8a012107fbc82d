"""One frame in, one :class:`Prediction` out: the TFLite model plus the manifest that says how to read it.

The converter's parity check runs models through this very class, so "the TFLite model agrees with Keras" is proven
on the code path the unit uses on the line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core import manifest as mf
from core import signature as sig
from core.preprocess import Preprocessor, Roi
from core.runtime import Runtime, create_interpreter, default_threads

_NP_DTYPE = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8}


class ModelMismatchError(ValueError):
    """The .tflite's tensors are not what its manifest says."""


def decide(p_defect: float, decision: mf.Decision) -> tuple[bool, float, bool]:
    """(defective, confidence, low_confidence) for one probability: the product's single decision rule.

    Defective means p > threshold, strictly, as the original app did; confidence is max(p, 1 - p).
    """
    lo, hi = decision.low_confidence_band
    return p_defect > decision.threshold, max(p_defect, 1.0 - p_defect), lo <= p_defect <= hi


def p_of_levels(out: mf.OutputSpec) -> tuple[float, ...] | None:
    """P(defective) for each of a quantized output's 256 levels, by its byte (``q & 0xFF``; None for a float
    output): dequantized in float32 as the features are (:func:`core.signature.dequantize`), and turned round where
    the sigmoid's p is P(good). Looking one up took 0.19 µs warm where the NumPy scalar arithmetic it replaces took
    1.36, and that ran on the inference loop right after ``invoke()``, its caches cold: 5-10 % of the loop's profile
    samples outside ``invoke()``."""
    if out.dtype == "float32":
        return None
    levels = np.arange(256, dtype=np.uint8).view(_NP_DTYPE[out.dtype])  # int8: byte 0x80 is -128
    p: list[float] = sig.dequantize(levels, out.scale, out.zero_point).tolist()
    return tuple(1.0 - v for v in p) if out.positive == "good" else tuple(p)


@dataclass(frozen=True)
class Prediction:
    label: str
    defective: bool
    p_defect: float
    confidence: float
    threshold: float
    low_confidence: bool
    model: str
    sha256: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    familiarity: sig.Familiarity | None = None  # None: the model has no signature

    @property
    def ood(self) -> float | None:
        """The distance from the training inputs (core/signature.py), scored on first reading."""
        return None if self.familiarity is None else self.familiarity.score

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "defective": self.defective, "p_defect": round(self.p_defect, 6),
            "confidence": round(self.confidence, 6), "threshold": self.threshold,
            "low_confidence": self.low_confidence, "model": self.model, "sha256": self.sha256,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            **({"ood": round(self.ood, 4)} if self.ood is not None else {}),
        }


def _check_tensors(m: mf.Manifest, inp: dict[str, Any], out: dict[str, Any], where: Path) -> None:
    want_shape = [1, m.input.height, m.input.width, m.input.channels]
    shape = [int(d) for d in inp["shape"]]
    problems = []
    if shape != want_shape:
        problems.append(f"input shape {shape} != manifest {want_shape}")
    if np.dtype(inp["dtype"]) != np.dtype(_NP_DTYPE[m.input.dtype]):
        problems.append(f"input dtype {np.dtype(inp['dtype']).name} != manifest {m.input.dtype}")
    scale, zp = inp["quantization"]
    if m.input.dtype != "float32" and (abs(scale - m.input.scale) > 1e-9 or zp != m.input.zero_point):
        problems.append(f"input quantization ({scale}, {zp}) != manifest ({m.input.scale}, {m.input.zero_point})")
    width = 1 if m.output.kind == "sigmoid" else 2
    if int(np.prod(out["shape"])) != width:
        problems.append(f"output shape {[int(d) for d in out['shape']]} does not fit a {m.output.kind} head")
    if np.dtype(out["dtype"]) != np.dtype(_NP_DTYPE[m.output.dtype]):
        problems.append(f"output dtype {np.dtype(out['dtype']).name} != manifest {m.output.dtype}")
    if problems:
        raise ModelMismatchError(f"{where}: model does not match its manifest: {'; '.join(problems)}")


def split_outputs(outs: list[dict[str, Any]], kind: str, where: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the classifier's output, its pooled features or None) among a model's outputs: the head is the one as wide
    as its kind (1 for a sigmoid, 2 for a softmax), whatever order the converter stored them in."""
    width = 1 if kind == "sigmoid" else 2
    head = [o for o in outs if int(np.prod(o["shape"])) == width]
    if len(outs) == 1:
        return outs[0], None
    if len(outs) != 2 or len(head) != 1:
        raise ModelMismatchError(f"{where}: model has {len(outs)} outputs; supported: its {kind} output and "
                                 "optionally its features")
    return head[0], next(o for o in outs if o is not head[0])


class Classifier:
    """A loaded model ready to classify frames. Not thread-safe: one inference thread owns it."""

    def __init__(self, manifest_path: Path, *, num_threads: int | None = None, delegate: str | None = None,
                 roi: Roi | None = None, frame_order: Literal["RGB", "BGR"] = "RGB",
                 runtime: Runtime | None = None, decision: mf.Decision | None = None):
        self.manifest_path = manifest_path
        self.manifest = mf.load(manifest_path)
        m = self.manifest
        self.threads = num_threads or default_threads()
        self.delegate = delegate
        self.interpreter, self.runtime = create_interpreter(
            mf.resolve(manifest_path, m.tflite), num_threads=self.threads, delegate=delegate, runtime=runtime)
        inp = self.interpreter.get_input_details()
        if len(inp) != 1:
            raise ModelMismatchError(f"{manifest_path}: model has {len(inp)} inputs; supported: one image input")
        out, features = split_outputs(self.interpreter.get_output_details(), m.output.kind, manifest_path)
        _check_tensors(m, inp[0], out, manifest_path)
        self._input = self.interpreter.tensor(inp[0]["index"])
        self._output_index = out["index"]
        self.signature, self._features = self._signature(m, features, manifest_path)
        self.preprocess = Preprocessor(m.input, roi=roi, frame_order=frame_order)
        self.decision = decision or m.decision
        self._p_is_good = m.output.positive == "good"
        self._defect_index = m.output.defect_index
        self._levels = p_of_levels(m.output)

    @staticmethod
    def _signature(m: mf.Manifest, features: dict[str, Any] | None, where: Path
                   ) -> tuple[sig.Signature | None, tuple[int, float, int] | None]:
        """The features output (index, scale, zero point) if the model has one, and the signature the manifest
        names, checked against its file and that output."""
        found = None
        if features is not None:
            scale, zp = features["quantization"]
            quantized = np.dtype(features["dtype"]) != np.float32
            found = (int(features["index"]), float(scale) if quantized else 0.0, int(zp) if quantized else 0)
        spec = m.signature
        if spec is None:
            return None, found
        if features is None:
            raise ModelMismatchError(f"{where}: the manifest has a signature, the model gives no features output")
        path = mf.resolve(where, spec.file)
        if not path.is_file() or mf.sha256_file(path) != spec.file.sha256:
            raise ModelMismatchError(f"{where}: signature file {path.name} is missing or not the one the manifest "
                                     "names (re-convert the model)")
        loaded = sig.load(path)
        width = int(np.prod(features["shape"]))
        if not width == spec.features == loaded.width:
            raise ModelMismatchError(f"{where}: features output is {width} wide, the signature "
                                     f"{loaded.width}, the manifest says {spec.features}")
        return loaded, found

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def ood_threshold(self) -> float | None:
        return None if self.manifest.signature is None else self.manifest.signature.threshold

    def features(self) -> np.ndarray | None:
        """The last classified input's pooled features (the model's second output, dequantized), if it has them."""
        raw = self._raw_features()
        return None if raw is None else sig.dequantize(*raw)

    def _raw_features(self) -> tuple[np.ndarray, float, int] | None:
        """The last input's features output as the model gave it, with its scale and zero point: a copy
        (``get_tensor`` copies it out of the interpreter), so the next ``invoke()`` leaves it as it was."""
        if self._features is None:
            return None
        index, scale, zp = self._features
        return self.interpreter.get_tensor(index).reshape(-1), scale, zp

    def _familiarity(self) -> sig.Familiarity | None:
        """The last input's features, kept for its score."""
        if self.signature is None:
            return None
        raw = self._raw_features()
        return None if raw is None else sig.Familiarity(self.signature, *raw)

    def p_defect_from_output(self, raw: np.ndarray) -> float:
        """Dequantize the output tensor and pick P(defective)."""
        v = raw.item(self._defect_index)  # a Python int (quantized) or float, as the tensor holds it
        if self._levels is not None:
            return self._levels[int(v) & 0xFF]
        p = float(v)
        return 1.0 - p if self._p_is_good else p

    def classify(self, frame: np.ndarray, preprocess: Preprocessor | None = None, box: Roi | None = None
                 ) -> Prediction:
        """Classify one frame, or the part in ``box`` of it (cropped, then resized once). ``preprocess``: read it
        otherwise than the camera's frames are read (the verification set's images are RGB at the model's size: no
        ROI, no channel swap), on this same interpreter."""
        t0 = time.perf_counter()
        pre = preprocess or self.preprocess
        region = pre.source(frame, box)  # raises FrameError before the interpreter's memory is touched
        buf = self._input()  # a view of the interpreter's input: must be released before invoke()
        pre.fill(region, buf[0])
        del buf
        t1 = time.perf_counter()
        self.interpreter.invoke()
        t2 = time.perf_counter()
        p = self.p_defect_from_output(self.interpreter.get_tensor(self._output_index))
        defective, confidence, low = decide(p, self.decision)
        familiarity = self._familiarity()
        t3 = time.perf_counter()
        return Prediction(
            label=self.manifest.labels[1] if defective else self.manifest.labels[0], defective=defective,
            p_defect=p, confidence=confidence, threshold=self.decision.threshold, low_confidence=low,
            model=self.manifest.name, sha256=self.manifest.tflite.sha256,
            timings_ms={"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                        "postprocess": (t3 - t2) * 1e3}, familiarity=familiarity,
        )
