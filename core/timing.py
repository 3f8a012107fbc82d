"""Which of several conversions of one model to run: the fastest here, measured in turns.

The converter uses it to choose the variant it puts first (on the converting machine), and the unit to choose the one
it runs (on its own runtime, threads and delegate: ``edge/variants.py``), by one rule. On a workstation int8 was
barely faster than float and float16 was chosen for MobileNetV2; on a Pi's NEON int8 is the fast one, and float16 is
unpacked to float32 when loaded (peak RSS 165 MB against 116 MB).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np

from core.classifier import Classifier

WITHIN = 1.05  # latencies this close to the quickest count as a tie: the machine's noise is larger than that


def interleaved_latency(classifiers: Sequence[Classifier], frame: np.ndarray, rounds: int = 30, per_round: int = 5
                        ) -> list[float]:
    """Median ms of one ``classify`` for each of ``classifiers``, measured in turns (a few calls of each, round after
    round), so that whatever else the machine does in the meantime slows them all alike: measured one after the
    other on a shared machine, a busy minute can make int8 look slower than float32."""
    for clf in classifiers:
        clf.classify(frame)
    times: list[list[float]] = [[] for _ in classifiers]
    for _ in range(rounds):
        for clf, sink in zip(classifiers, times, strict=True):
            t = time.perf_counter()
            for _ in range(per_round):
                clf.classify(frame)
            sink.append((time.perf_counter() - t) * 1e3 / per_round)
    return [statistics.median(t) for t in times]


def quickest(latency_ms: Sequence[float], agreement: Sequence[float], size: Sequence[float]) -> int:
    """The index to run: the fastest; of those within :data:`WITHIN` of it, the one that agrees with Keras most,
    then the smallest (``size``: the file, or the memory it takes). Float16 with 2 calls in 400 changed was once
    chosen over float32 with none, by size alone."""
    if not latency_ms:
        raise ValueError("no candidates")
    best = min(latency_ms)
    tied = [i for i, ms in enumerate(latency_ms) if ms <= best * WITHIN]
    return min(tied, key=lambda i: (-agreement[i], size[i]))
