"""The last N frames with their ids and predictions, bounded by count and by bytes.

Feedback and Grad-CAM requests name a frame by id after the fact; this is where the unit still has it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from edge.classifier import Prediction


@dataclass(frozen=True)
class Buffered:
    frame_id: str
    image: np.ndarray
    frame_order: str
    prediction: Prediction
    captured_at: float


class FrameRing:
    def __init__(self, *, max_frames: int, max_bytes: int):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._frames: OrderedDict[str, Buffered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: Buffered) -> None:
        with self._lock:
            self._frames[item.frame_id] = item
            self._bytes += item.image.nbytes
            while self._frames and (len(self._frames) > self.max_frames or self._bytes > self.max_bytes):
                _, old = self._frames.popitem(last=False)
                self._bytes -= old.image.nbytes

    def get(self, frame_id: str) -> Buffered | None:
        with self._lock:
            return self._frames.get(frame_id)
