"""The parity proof: does the TFLite model, run exactly as the edge runs it, decide as the Keras model does?

Keras gets each image through the edge's own :class:`~core.preprocess.Preprocessor` (float path); TFLite gets it
through the edge's :class:`~core.classifier.Classifier` (quantized path, raw pixels for int8). Both use the edge's one
decision rule (:func:`core.classifier.decide`: p > threshold). What differs is only the conversion.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.metrics import roc_auc
from core.classifier import Classifier, decide
from core.manifest import Decision
from core.preprocess import Preprocessor

Frames = Callable[[], Iterable[tuple[int, np.ndarray]]]  # a re-iterable source of (label, RGB frame)


@dataclass(frozen=True)
class KerasReference:
    """The Keras model's p_defect on every evaluation image, computed once and shared by all candidates."""

    labels: np.ndarray
    p: np.ndarray
    latency_ms: float  # median single-image model.predict, the original app's way


def _batches(frames: Iterable[tuple[int, np.ndarray]], pre: Preprocessor, size: int
             ) -> Iterator[tuple[list[int], np.ndarray]]:
    labels: list[int] = []
    batch: list[np.ndarray] = []
    for label, frame in frames:
        labels.append(label)
        batch.append(pre(frame))
        if len(batch) == size:
            yield labels, np.stack(batch)
            labels, batch = [], []
    if batch:
        yield labels, np.stack(batch)


def keras_p(model: Any, pre: Preprocessor, frames: Frames, *, defect_index: int, inverted: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p_defect) of the Keras model on every evaluation frame, fed through ``pre``."""
    labels: list[int] = []
    ps: list[np.ndarray] = []
    for lab, x in _batches(frames(), pre, 32):
        out = np.asarray(model(x, training=False))
        ps.append(out[:, defect_index] if out.shape[-1] > 1 else out[:, 0])
        labels += lab
    if not ps:
        raise ValueError("no evaluation image could be read")
    p = np.concatenate(ps).astype(np.float64)
    return np.asarray(labels), (1.0 - p if inverted else p)


def keras_reference(model: Any, pre: Preprocessor, frames: Frames, *, defect_index: int, inverted: bool = False,
                    latency_runs: int = 20, computed: tuple[np.ndarray, np.ndarray] | None = None) -> KerasReference:
    """The reference for every candidate; ``computed``: (labels, p_defect) already computed with ``pre``."""
    labels, p = computed or keras_p(model, pre, frames, defect_index=defect_index, inverted=inverted)
    first = pre(next(iter(frames()))[1])[None]
    model.predict(first, verbose=0)
    times = []
    for _ in range(latency_runs):
        t = time.perf_counter()
        model.predict(first, verbose=0)
        times.append((time.perf_counter() - t) * 1e3)
    return KerasReference(labels, p, statistics.median(times))


def compare(ref: KerasReference, clf: Classifier, frames: Frames, *, latency_runs: int = 50) -> dict[str, Any]:
    """Run every evaluation frame through ``clf`` and compare with the Keras reference."""
    p_tfl = np.array([clf.classify(frame).p_defect for _, frame in frames()], np.float64)
    if len(p_tfl) != len(ref.p):
        raise RuntimeError(f"evaluation set changed between passes ({len(ref.p)} then {len(p_tfl)} images)")
    rule: Decision = clf.decision
    d_keras = np.array([decide(float(p), rule)[0] for p in ref.p])
    d_tfl = np.array([decide(float(p), rule)[0] for p in p_tfl])
    y = ref.labels.astype(bool)
    frame = next(iter(frames()))[1]
    clf.classify(frame)
    times = []
    for _ in range(latency_runs):
        t = time.perf_counter()
        clf.classify(frame)
        times.append((time.perf_counter() - t) * 1e3)
    dp = np.abs(p_tfl - ref.p)
    return {
        "agreement": float((d_keras == d_tfl).mean()),
        "disagreements": int((d_keras != d_tfl).sum()),
        "accuracy_keras": float((d_keras == y).mean()),
        "accuracy_tflite": float((d_tfl == y).mean()),
        "mean_abs_dp": float(dp.mean()),
        "max_abs_dp": float(dp.max()),
        "auc_keras": roc_auc(y, ref.p),
        "auc_tflite": roc_auc(y, p_tfl),
        "latency_ms_keras": ref.latency_ms,
        "latency_ms_tflite": statistics.median(times),
        "p_tflite": p_tfl,
    }
