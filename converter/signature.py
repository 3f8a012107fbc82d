"""What the model has seen, recorded at conversion (``docs/framing.md``): the pooled features before the model's
last layer become a second output of the ``.tflite``, and their signature over the training images
(:mod:`core.signature`) is written beside it, with the threshold above which the unit calls an input unfamiliar.

Fit on the converted model's own features (as the unit will compute them, quantized or not), never Keras': a unit
compares like with like.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from core import manifest as mf
from core import signature
from core.classifier import Classifier
from core.preprocess import Preprocessor

FIT_IMAGES = 400  # training images the signature is fit on


def with_features(model: Any) -> tuple[Any, str]:
    """``model`` with its pooled features as a second output, and why not (``None``) when its graph does not allow
    it: the last layer must be a Dense head reading a flat feature vector."""
    from edge.tfload import tf_keras

    _, keras = tf_keras()
    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        return None, f"its last layer is a {type(last).__name__}, not a Dense head"
    try:
        features = last.input
        if len(features.shape) != 2 or not features.shape[-1] or features.shape[-1] < 2:
            return None, f"its head reads a tensor of shape {features.shape}, not pooled features"
        return keras.Model(model.inputs, [model.outputs[0], features], name=f"{model.name}_with_features"), ""
    except (AttributeError, ValueError) as e:
        return None, f"its head's input cannot be reached ({str(e).splitlines()[0][:120]})"


def _features(clf: Classifier, frames: Iterable[np.ndarray], pre: Preprocessor) -> np.ndarray:
    rows = []
    for frame in frames:
        clf.classify(frame, pre)
        f = clf.features()
        assert f is not None
        rows.append(f)
    return np.stack(rows)


def fit(clf: Classifier, training: list[np.ndarray], held_out: list[np.ndarray], out: Path, name: str
        ) -> tuple[mf.SignatureSpec | None, dict[str, Any]]:
    """Fit the signature on ``training`` images through ``clf`` (the chosen ``.tflite``), choose the threshold on
    half of the ``held_out`` images and measure it on the other half; write ``NAME.signature.npz`` in ``out``.
    None, and why in the report, when the features say nothing (an untrained model gives one vector for all)."""
    pre = Preprocessor(clf.manifest.input)  # images as the converter reads them: RGB, whole, at any size
    features = _features(clf, training, pre)
    if float(features.std(axis=0).max()) < 1e-6:
        why = f"its features are the same for all {len(training)} training images: no signature"
        print(f"defect-convert: {why}", file=sys.stderr)
        return None, {"skipped": why}
    sig = signature.fit(features)
    scores = sig.score(_features(clf, held_out, pre))
    chosen, measured = scores[0::2], scores[1::2]
    limit = signature.threshold(chosen)
    if not limit > 0:
        why = f"held-out images all score {limit:g}: no threshold to set"
        print(f"defect-convert: {why}", file=sys.stderr)
        return None, {"skipped": why}
    below = float((measured <= limit).mean()) if len(measured) else 1.0
    path = out / f"{name}.signature.npz"
    mf.write_atomic(path, signature.to_bytes(sig))
    h, w = clf.manifest.input.height, clf.manifest.input.width
    probes = {what: float(sig.score(_features(clf, [img], pre))[0]) for what, img in (
        ("flat grey", np.full((h, w, 3), 128, np.uint8)),
        ("noise", np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)))}
    spec = mf.SignatureSpec(
        file=mf.file_ref(path, out), features=sig.width, images=len(training), threshold=round(limit, 4),
        chosen_by=f"{signature.MARGIN} x the {signature.QUANTILE:.1%} quantile of {len(chosen)} held-out images' "
                  "scores",
        held_out_below=round(below, 4))
    report = {"features": sig.width, "components": len(sig.variances), "images": len(training),
              "threshold": spec.threshold, "chosen_by": spec.chosen_by,
              "held_out_below": below, "held_out_measured": len(measured),
              "held_out_median": float(np.median(scores)), "probes": probes}
    print(f"defect-convert: signature of {len(training)} training images ({sig.width} features): unfamiliar above "
          f"{limit:.2f}; {below:.1%} of {len(measured)} other held-out images below it; "
          + ", ".join(f"{k} {v:.1f}" for k, v in probes.items()), file=sys.stderr)
    return spec, report
