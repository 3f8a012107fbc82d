"""The verification set a unit re-proves parity with, on its own runtime and CPU (``edge/verify.py``).

A few dozen evaluation images: half the ones nearest the decision threshold (where a platform's rounding flips a
call) and half spread evenly over the range of p. Each is stored at the model's input size as a JPEG, and Keras'
p_defect is computed on the *decoded* JPEG through the unit's own preprocessing, so the unit, decoding the same file,
feeds the model exactly what Keras was given. The tolerance on |p_unit - p_keras| is what this machine's runtime
shows on the set plus an allowance per quantization for another platform's kernels: float models move by rounding
only, quantized ones by whole output steps (both measured between x86 and aarch64 by tests/test_aarch64.py, figures
in docs/unit.md); a model that is not the one converted moves far more.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge import manifest as mf
from edge.classifier import Classifier
from edge.images import decode_rgb, encode_jpeg
from edge.preprocess import Preprocessor

COUNT = 32
ALLOWANCE = {"float32": 1e-3, "float16": 1e-3, "dynamic": 0.1, "int8": 0.2, "mixed": 0.2}


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
        for k, ((jpeg, _), p) in enumerate(zip(images, p_keras, strict=True)):
            path = tmp / f"{k:03d}.jpg"
            path.write_bytes(jpeg)
            entries.append({"file": f"{name}.verify/{path.name}", "sha256": mf.sha256_file(path),
                            "p_keras": float(p)})
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
    doc = {"model": name, "quantization": quantization, "threshold": threshold,
           "tolerance": {"max_abs_dp": here + ALLOWANCE[quantization], "measured_here_max_abs_dp": here,
                         "platform_allowance": ALLOWANCE[quantization]},
           "images": entries}
    path = out_dir / f"{name}.verify.json"
    mf.write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path, doc
