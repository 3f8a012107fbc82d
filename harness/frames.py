"""An in-memory camera: frames as fast as asked (or at a set period), looping or not, with no I/O cost."""

from __future__ import annotations

import time

import numpy as np

from edge.sources.base import EndOfStream, FrameSource


class MemoryFrames(FrameSource):
    """``images`` in order. Live by default (inference behind means the newest frame wins), as a camera is."""

    frame_order = "RGB"

    def __init__(self, images: list[np.ndarray], *, loop: bool = False, period: float = 0.0, live: bool = True):
        self.images, self.loop, self.period, self.live = images, loop, period, live
        self.i = 0

    @property
    def description(self) -> str:
        return "memory"

    def open(self) -> None:
        pass

    def read(self) -> tuple[np.ndarray, str] | None:
        if self.i >= len(self.images):
            if not self.loop:
                raise EndOfStream
            self.i = 0
        if self.period:
            time.sleep(self.period)
        self.i += 1
        return self.images[self.i - 1], str(self.i - 1)

    def close(self) -> None:
        pass
