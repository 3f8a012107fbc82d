"""The verification set a unit re-proves parity with, on its own runtime and CPU (``core/verify.py``).

A few dozen evaluation images: half the ones nearest the decision threshold (where a platform's rounding flips a
call) and half spread evenly over the range of p. Each is stored at the model's input size as a JPEG, and Keras'
p_defect is computed on the *decoded* JPEG through the unit's own preprocessing, so the unit, decoding the same file,
feeds the model exactly what Keras was given.

Each image also carries this machine's TFLite p (``p_tflite``), and the unit checks its own p against that, within
an allowance per quantization for another platform's kernels: float models move by rounding only, quantized ones by
whole output steps (int8 EfficientNetB0 by up to 0.168 between x86 and aarch64's other kernels under emulation,
tests/test_aarch64.py, docs/unit.md). Checking
against Keras' p instead, within this machine's own worst error plus the allowance, let a conversion forced through
pass anywhere: int8 calibrated on black images, p about 0.5 on everything, had a tolerance of 0.70. And the images
whose Keras p is ``FAR`` or more from the threshold (``far``) are the calls a model cannot be excused for changing:
the unit requires its decisions on them to agree with Keras (core/verify.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core import manifest as mf
from core.classifier import Classifier
from core.images import decode_rgb, encode_jpeg, read_rgb
from core.preprocess import Preprocessor
from core.verify import FAR_AGREEMENT, confident_calls

COUNT = 32
ALLOWANCE = {"float32": 1e-3, "float16": 1e-3, "dynamic": 0.1, "int8": 0.2, "mixed": 0.2}
FAR = 0.25  # |p_keras - threshold| of the calls that must not change


def confident_problem(doc: dict[str, Any], decision: mf.Decision) -> str | None:
    """What a unit will refuse in this machine's own TFLite p of the set (core/verify.py's rule), or None: said when
    the converter writes the set, before anyone installs the model."""
    items = doc["images"]
    sides, changed = confident_calls([i["file"] for i in items], [i["p_keras"] for i in items],
                                     [i["p_tflite"] for i in items], [i["far"] for i in items], decision)
    short = [f"{side} {n - len(changed[side])} of {n}" for side, n in sides.items()
             if 1.0 - len(changed[side]) / n < FAR_AGREEMENT]
    return (f"of its confident calls (Keras' p {FAR:g} or more from the threshold) it keeps only {', '.join(short)}"
            f" (units need {FAR_AGREEMENT:.0%} of each side)") if short else None


def select(p: np.ndarray, threshold: float, count: int = COUNT) -> list[int]:
    """Indices of ``count`` images: half nearest the threshold, the rest spread evenly over p."""
    if len(p) <= count:
        return list(range(len(p)))
    near = [int(i) for i in np.argsort(np.abs(p - threshold), kind="stable")[:count // 2]]
    rest = [int(i) for i in np.argsort(p, kind="stable") if int(i) not in set(near)]
    spread = [rest[round(k * (len(rest) - 1) / max(1, count - len(near) - 1))] for k in range(count - len(near))]
    return sorted(set(near) | set(spread))


def write(name: str, out_dir: Path, frames: Iterable[tuple[int, np.ndarray]], picks: list[int], keras_model: Any,
          keras_pre: Preprocessor, tflite_manifest: Path, quantization: str, threshold: float
          ) -> tuple[Path, dict[str, Any]]:
    """Write ``NAME.verify/`` and ``NAME.verify.json`` into ``out_dir``; return the JSON's path and content."""
    spec = keras_pre.spec
    store = Preprocessor(spec.model_copy(update={"dtype": "uint8", "scale": 0.0, "zero_point": 0, "channels": 3,
                                                 "color_order": "RGB"}))
    wanted = set(picks)
    images = []
    for i, (_, frame) in enumerate(frames):
        if i in wanted:
            jpeg = encode_jpeg(store.pixels(frame).copy(), "RGB", 95)
            images.append((jpeg, decode_rgb(jpeg)))
    x = np.stack([keras_pre(img) for _, img in images])
    out = np.asarray(keras_model(x, training=False), np.float64)
    clf = Classifier(tflite_manifest, num_threads=1)
    p_tfl = np.array([clf.classify(img).p_defect for _, img in images])
    m = clf.manifest
    column = m.output.defect_index if m.output.kind == "softmax2" else 0
    p_keras = out[:, column] if m.output.positive == "defective" else 1.0 - out[:, 0]
    here = float(np.abs(p_keras - p_tfl).max())
    folder, tmp = out_dir / f"{name}.verify", out_dir / f".{name}.verify.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    entries = []
    try:
        for k, ((jpeg, _), p, p_here) in enumerate(zip(images, p_keras, p_tfl, strict=True)):
            path = tmp / f"{k:03d}.jpg"
            path.write_bytes(jpeg)
            entries.append({"file": f"{name}.verify/{path.name}", "sha256": mf.sha256_file(path),
                            "p_keras": float(p), "p_tflite": float(p_here), "far": bool(abs(p - threshold) >= FAR)})
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
    doc = _document(name, quantization, threshold, entries, here)
    path = out_dir / f"{name}.verify.json"
    mf.write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path, doc


def _document(name: str, quantization: str, threshold: float, entries: list[dict[str, Any]], here: float
              ) -> dict[str, Any]:
    return {"model": name, "quantization": quantization, "threshold": threshold,
            "tolerance": {"max_abs_dp": here + ALLOWANCE[quantization], "measured_here_max_abs_dp": here,
                          "platform_allowance": ALLOWANCE[quantization], "far": FAR},
            "images": entries}


def write_variant(doc: dict[str, Any], out_dir: Path, stem: str, tflite_manifest: Path, quantization: str
                  ) -> Path:
    """``STEM.verify.json`` for another variant of the model whose set is ``doc``: the same images (in
    ``NAME.verify/``) and Keras' p, with this variant's own TFLite p on them, read as the unit reads them."""
    clf = Classifier(tflite_manifest, num_threads=1)
    plain = Preprocessor(clf.manifest.input)
    p_tfl = [clf.classify(read_rgb(out_dir / item["file"]), plain).p_defect for item in doc["images"]]
    here = max(abs(float(item["p_keras"]) - p) for item, p in zip(doc["images"], p_tfl, strict=True))
    entries = [{**item, "p_tflite": float(p)} for item, p in zip(doc["images"], p_tfl, strict=True)]
    path = out_dir / f"{stem}.verify.json"
    mf.write_atomic(path, (json.dumps(_document(doc["model"], quantization, doc["threshold"], entries, here),
                                      indent=1) + "\n").encode())
    return path
