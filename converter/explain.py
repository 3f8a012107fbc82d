"""Which layers and method a model's heatmaps use, chosen by measurement on its own evaluation images.

The measure needs no defect masks, so it works on a user's photos: *deletion faithfulness*. Blur the hottest 10 % of
the model's input by the heatmap and see how far the model's own p_defect falls; a heatmap on the evidence the model
used makes it fall far, one elsewhere barely moves it. Blurring a random 10 % is the baseline. On the demo models,
where the synthetic generator knows each defect's mask, ranking by deletion picked the same layer and method as the
pointing game (docs/gradcam.md).

Candidates: the last feature map at each resolution from 1/32 to 1/4 of the input (where each stage of the network
ends, paddings skipped), the original app's layer for a reference architecture, and each two neighbouring
resolutions fused; each with every method. One compiled gradient per candidate gives all methods at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.payloads import CamMethod
from edge.gradcam.cam import METHODS, GradCam, feature_map_layers
from edge.gradcam.overlay import full_frame_heatmap
from edge.gradcam.quality import blur_pixels, random_share, top_share

SHARE = 0.1  # of the input's pixels blurred, hottest first
MAX_IMAGES = 24  # of the images the model calls defective; more moves the choice little and costs time


@dataclass(frozen=True)
class Choice:
    layers: tuple[str, ...]
    method: CamMethod
    deletion_drop: float  # mean fall of p_defect when the hottest 10 % is blurred
    random_drop: float  # the same for a random 10 %
    images: int
    table: list[dict[str, Any]] = field(default_factory=list)  # every candidate tried, best first

    @property
    def chosen_by(self) -> str:
        if not self.images:
            return "default (no image of the evaluation set was called defective, so nothing to measure on)"
        return (f"deletion faithfulness on {self.images} evaluation images called defective: blurring the hottest "
                f"{SHARE:.0%} lowers p_defect by {self.deletion_drop:.3f}, a random {SHARE:.0%} by "
                f"{self.random_drop:.3f}")


def candidates(model: Any, size: int, original: str) -> list[tuple[str, ...]]:
    """Single layers, coarsest last, then neighbouring pairs fused. ``size``: the input's larger side. A model that
    takes any input size has no fixed resolutions to pick from: only its ``original`` layer is tried."""
    last_at: dict[tuple[int, int], str] = {}
    for name in feature_map_layers(model):
        layer = model.get_layer(name)
        h, w = layer.output.shape[1:3]
        if type(layer).__name__ == "ZeroPadding2D" or h is None or w is None:
            continue
        if size / 32 <= max(h, w) <= size / 4:
            last_at[(int(h), int(w))] = name
    singles: list[tuple[str, ...]] = [(name,) for _, name in sorted(last_at.items(), reverse=True)]
    if (original,) not in singles:
        singles.append((original,))
    pairs = [a + b for a, b in itertools.pairwise(singles) if a[0] in last_at.values() and b[0] in last_at.values()]
    return singles + pairs


def choose(model: Any, inputs: np.ndarray, *, defect_index: int, p_is_good: bool, original: str,
           fallback: tuple[tuple[str, ...], CamMethod], layers: tuple[str, ...] = (), method: CamMethod | None = None,
           seed: int = 0) -> Choice:
    """The candidate (or the given ``layers``) and method (or the given ``method``) whose heatmaps' hottest pixels
    matter most to the model, on ``inputs``: preprocessed evaluation images the model calls defective. With no
    inputs, ``fallback``: what measured best on models of its architecture."""
    options = [layers] if layers else candidates(model, max(inputs.shape[1:3], default=0), original)
    methods = [method] if method else list(METHODS)
    if not len(inputs):
        return Choice(layers or fallback[0], method or fallback[1], 0.0, 0.0, 0)
    rng = np.random.default_rng(seed)
    shape = inputs.shape[1:3]
    random_drop: float | None = None
    table: list[dict[str, Any]] = []
    for option in options:
        cam = GradCam(model, option, defect_index=defect_index, p_is_good=p_is_good)
        maps, p0 = zip(*(cam.all_methods(x) for x in inputs), strict=True)
        if random_drop is None:  # the baseline, once: it depends on the model, not the candidate
            random_drop = float(np.mean(np.asarray(p0) - cam.p_defect(np.stack(
                [blur_pixels(x, random_share(shape, SHARE, rng)) for x in inputs]))))
        for m in methods:
            k = METHODS.index(m)
            blurred = np.stack([blur_pixels(x, top_share(full_frame_heatmap(h[k], shape, None), SHARE))
                                for x, h in zip(inputs, maps, strict=True)])
            drop = float(np.mean(np.asarray(p0) - cam.p_defect(blurred)))
            table.append({"layers": "+".join(option), "method": m, "deletion_drop": round(drop, 4)})
    table.sort(key=lambda r: -r["deletion_drop"])  # stable: on a tie the earlier (finer, single) candidate wins
    best = table[0]
    return Choice(tuple(best["layers"].split("+")), best["method"], best["deletion_drop"], random_drop or 0.0,
                  len(inputs), table)
