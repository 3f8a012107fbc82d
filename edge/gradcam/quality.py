"""How good a heatmap is: pointing game against the synthetic generator's defect masks, and deletion faithfulness
(which needs no mask).

Pure NumPy/OpenCV, shared by the test that guards localisation, ``bench/gradcam.py`` and the converter's choice of
heatmap (``converter/explain.py``).
"""

from __future__ import annotations

import cv2
import numpy as np


def pointing_hit(heat: np.ndarray, mask: np.ndarray, dilate_px: int = 5) -> bool:
    """Does the heatmap's maximum fall inside the defect mask (dilated by a few pixels)?"""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * dilate_px + 1,) * 2, np.uint8))
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(grown[y, x])


def chance(mask: np.ndarray, dilate_px: int = 5) -> float:
    """The pointing game's chance level: the share of the image the dilated mask covers."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * dilate_px + 1,) * 2, np.uint8))
    return float(grown.mean())


def blur_pixels(image: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``image`` (a frame, or a model's float input) with the ``chosen`` pixels replaced by a heavy blur of it
    (information removed, no new edges); the blur's width scales with the image, 8 px at 256."""
    blurred = cv2.GaussianBlur(image, (0, 0), max(image.shape[:2]) / 32).reshape(image.shape)
    out = image.copy()
    out[chosen] = blurred[chosen]
    return out


def top_share(heat: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` of pixels with the highest heat, as a boolean mask."""
    k = max(1, round(heat.size * share))
    flat = np.zeros(heat.size, bool)
    flat[np.argpartition(heat.ravel(), -k)[-k:]] = True
    return flat.reshape(heat.shape)


def random_share(shape: tuple[int, int], share: float, rng: np.random.Generator) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], bool)
    flat[rng.choice(flat.size, round(flat.size * share), replace=False)] = True
    return flat.reshape(shape)
