"""The last N frames with their ids and predictions, bounded by count and by bytes.

Feedback and Grad-CAM requests name a frame by id after the fact; this is where the unit still has it. A frame the
source decoded from a file is kept as that file's bytes, not as pixels: 64 replayed 300×300 photos take 1 MB instead
of 17 MB of the unit's memory, and decode, when a request names one, to exactly the pixels that were classified (the
same bytes through the same :func:`core.images.decode_rgb`). A camera's frames have no such bytes and are kept raw;
``state.ring_max_mb`` bounds them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from core.classifier import Prediction
from core.images import decode_rgb
from core.preprocess import Roi
from edge.sources.base import Frame, FrameOrder


@dataclass(frozen=True)
class Buffered:
    frame_id: str
    stored: np.ndarray  # the pixels in ``frame_order``; when ``encoded``, the file's bytes (RGB once decoded)
    frame_order: FrameOrder
    prediction: Prediction
    captured_at: float
    encoded: bool = False
    crop: Roi | None = None  # the region the model saw, when it was cropped to the part

    @classmethod
    def of(cls, frame_id: str, frame: Frame, order: FrameOrder, prediction: Prediction, crop: Roi | None = None
           ) -> Buffered:
        if frame.encoded is not None:
            return cls(frame_id, frame.encoded, "RGB", prediction, frame.captured_at, encoded=True, crop=crop)
        return cls(frame_id, frame.image, order, prediction, frame.captured_at, crop=crop)

    @property
    def image(self) -> np.ndarray:
        """The frame's pixels, in :attr:`frame_order`."""
        return decode_rgb(self.stored, self.frame_id) if self.encoded else self.stored


class FrameRing:
    def __init__(self, *, max_frames: int, max_bytes: int):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._frames: OrderedDict[str, Buffered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: Buffered) -> None:
        with self._lock:
            self._frames[item.frame_id] = item
            self._bytes += item.stored.nbytes
            while self._frames and (len(self._frames) > self.max_frames or self._bytes > self.max_bytes):
                _, old = self._frames.popitem(last=False)
                self._bytes -= old.stored.nbytes

    def get(self, frame_id: str) -> Buffered | None:
        with self._lock:
            return self._frames.get(frame_id)
