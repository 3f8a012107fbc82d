"""Heatmap on the frame: resized to the model's input crop, placed back on the full frame (ROI), colour-mapped."""

from __future__ import annotations

import cv2
import numpy as np

from core.preprocess import Roi


def full_frame_heatmap(cam: np.ndarray, frame_hw: tuple[int, int], roi: Roi | None) -> np.ndarray:
    """The heatmap in frame coordinates (0 outside the ROI), float32 in [0, 1]."""
    h, w = frame_hw
    x, y, rw, rh = (roi.x, roi.y, roi.width, roi.height) if roi else (0, 0, w, h)
    out = np.zeros((h, w), np.float32)
    out[y:y + rh, x:x + rw] = cv2.resize(cam.astype(np.float32), (rw, rh), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


def blend(frame_bgr: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45,
          colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The frame (BGR, as OpenCV writes it) with the heatmap blended over it; ``alpha`` is the heatmap's weight."""
    bgr = frame_bgr if frame_bgr.ndim == 3 else cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), colormap)
    return cv2.addWeighted(colour, alpha, bgr, 1.0 - alpha, 0.0)


def encode(image_bgr: np.ndarray, suffix: str = ".jpg", jpeg_quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(suffix, image_bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix == ".jpg" else [])
    if not ok:
        raise ValueError(f"{suffix} encoding failed")
    return buf.tobytes()
