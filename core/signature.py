"""What the model has seen: a compact signature of its training inputs as the model sees them, and how far an input
is from them (``docs/framing.md``).

A classifier answers every input with a confident p, an impeller it has never seen as readily as a part it was
trained on: the demo MobileNetV2 calls every casting photo defective at p ≈ 0.996. The pooled features before its
last layer tell more. The converter keeps their mean and principal directions over the training images
(:func:`fit`); the converted model gives the same features as a second output, so scoring an input costs a few
thousand multiply-adds after the ``invoke()`` that classified it, not a second inference.

The score is the larger of two distances, each normalised so that a training image scores about 1: the Mahalanobis
distance in the ``k`` principal directions, ``sum z_i^2 / var_i / k``, and the residual outside them,
``r^2 / mean_r2``, as a square root. Foreign inputs differ in one or the other; averaged, a 1,280-feature model's
residual counted as one term in seventeen and a casting photo through the demo MobileNetV2 often passed as familiar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

COMPONENTS = 64  # principal directions kept, at most half the features: the residual must still mean something
QUANTILE = 0.995  # the threshold: this quantile of held-out images' scores ...
# ... times this. A quantile of the hundred or so images a conversion holds out lies below the tail of the next
# thousand (seen on casting photos: 97.5 % of 651 below it); unfamiliar inputs score three times higher and more.
MARGIN = 1.25


class SignatureError(ValueError):
    """A signature file that cannot be read, or does not fit its model."""


@dataclass(frozen=True)
class Signature:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    variances: np.ndarray  # (k,), the training features' variance along each
    residual: float  # the training features' mean squared distance outside the k directions

    @property
    def width(self) -> int:
        return int(self.mean.shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each row of ``features`` (n x d, or one d-vector) from the training inputs; ~1 for them."""
        x = np.atleast_2d(np.asarray(features, np.float32)) - self.mean
        z = x @ self.components.T
        r2 = np.maximum(np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", z, z), 0.0)
        inside = (z * z / self.variances).sum(axis=1) / len(self.variances)
        return np.asarray(np.sqrt(np.maximum(inside, r2 / self.residual)))

    @cached_property
    def _weights(self) -> np.ndarray:
        return np.asarray(1.0 / (self.variances * len(self.variances)), np.float32)

    def score_one(self, features: np.ndarray) -> float:
        """:meth:`score` of one d-vector, as the unit scores every frame: the same sums in a few vector products,
        13 µs against 32 µs for the batch form (1,280 features, 64 directions), on every result."""
        x = features - self.mean
        z = self.components @ x
        zz = z * z
        r2 = max(float(x @ x) - float(zz.sum()), 0.0)
        return float(max(float(zz @ self._weights), r2 / self.residual) ** 0.5)


class Familiarity:
    """One input's distance from the training inputs, scored when first asked (and then remembered), or with others
    in one pass (:func:`score_all`).

    The classifier keeps the features ``invoke()`` gave (a copy of 1,280 bytes for the demo MobileNetV2) and leaves
    the sums to whoever reads the score: on the unit, the publisher, which scores each of its batches in one pass.
    The inference loop is the pipeline's critical path, and there, right after an ``invoke()`` that had walked
    through the model's weights, the signature's 330 KB were out of the cache: the score cost 37 µs of CPU against
    10 µs warm, and the loop now spends 0.045-0.070 ms less per frame (``docs/benchmarks.md``).
    """

    __slots__ = ("_raw", "_scale", "_score", "_signature", "_zero_point")

    def __init__(self, signature: Signature, raw: np.ndarray, scale: float, zero_point: int):
        self._signature, self._raw, self._scale, self._zero_point = signature, raw, scale, zero_point
        self._score: float | None = None

    @property
    def score(self) -> float:
        if self._score is None:
            self._score = self._signature.score_one(dequantize(self._raw, self._scale, self._zero_point))
        return self._score


def score_all(items: Iterable[Familiarity]) -> None:
    """Score those of ``items`` not scored yet, each signature's in one pass over its inputs' stacked features.

    One by one, each score reads the signature's 330 KB again; on the unit's publisher, between two batches of
    results, they had left the cache, and the publisher spent half its CPU per result on the score. Stacked, the
    signature is read once per batch (``docs/benchmarks.md``)."""
    groups: dict[tuple[int, float, int], list[Familiarity]] = {}
    for item in items:
        if item._score is None:
            groups.setdefault((id(item._signature), item._scale, item._zero_point), []).append(item)
    for group in groups.values():
        first = group[0]
        raw = np.stack([item._raw for item in group])
        scores = first._signature.score(dequantize(raw, first._scale, first._zero_point))
        for item, score in zip(group, scores.tolist(), strict=True):
            item._score = score


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """A features output as float32 (``scale`` 0: it was float already)."""
    f = raw.astype(np.float32)
    return (f - np.float32(zero_point)) * np.float32(scale) if scale else f


def fit(features: np.ndarray, components: int = COMPONENTS) -> Signature:
    """The signature of ``features`` (n x d, the training images' pooled features as the converted model gives
    them)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 8:
        raise ValueError(f"a signature needs at least 8 feature vectors, got {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(components, len(x) - 1, x.shape[1] // 2))
    variances = np.maximum(s[:k] ** 2 / (len(x) - 1), 1e-8)
    z = centred @ vt[:k].T
    r2 = np.maximum((centred ** 2).sum(axis=1) - (z ** 2).sum(axis=1), 0.0)
    return Signature(mean.astype(np.float32), vt[:k].astype(np.float32), variances.astype(np.float32),
                     float(max(r2.mean(), 1e-8)))


def threshold(held_out_scores: np.ndarray, quantile: float = QUANTILE) -> float:
    """The score above which an input is unfamiliar: :data:`MARGIN` times ``quantile`` of held-out images'
    scores."""
    return MARGIN * float(np.quantile(np.asarray(held_out_scores, np.float64), quantile))


def to_bytes(sig: Signature) -> bytes:
    """The signature as ``.npz`` bytes (the caller writes them atomically, beside the model)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, mean=sig.mean, components=sig.components, variances=sig.variances,
             residual=np.float32(sig.residual))
    return buf.getvalue()


def load(path: Path) -> Signature:
    try:
        with np.load(path, allow_pickle=False) as data:
            sig = Signature(data["mean"].astype(np.float32), data["components"].astype(np.float32),
                            data["variances"].astype(np.float32), float(data["residual"]))
    except (OSError, ValueError, KeyError) as e:
        raise SignatureError(f"{path}: signature unreadable: {e}") from None
    k, d = sig.components.shape if sig.components.ndim == 2 else (0, 0)
    if sig.mean.shape != (d,) or sig.variances.shape != (k,) or k == 0 or not np.isfinite(sig.components).all():
        raise SignatureError(f"{path}: signature malformed (mean {sig.mean.shape}, components "
                             f"{sig.components.shape}, variances {sig.variances.shape})")
    return sig
