"""Capture and inference, overlapped: a capture thread feeds a bounded slot, the inference loop takes from it.

On a live line the newest frame wins: when inference falls behind, the oldest waiting frame is dropped and counted,
so results never lag the conveyor. A replay of recorded frames may instead ask that nothing be dropped
(``drop_when_behind=False``): capture then waits for inference. Trigger modes: ``continuous`` (every frame, or at most
``target_fps``) and ``on_demand`` (one frame per :meth:`Pipeline.trigger`, e.g. from a part-present sensor).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from edge.classifier import Classifier, Prediction
from edge.preprocess import FrameError
from edge.sources.base import Camera, Frame

log = logging.getLogger(__name__)

Mode = Literal["continuous", "on_demand"]


class FrameIds:
    """``<device>-<boot epoch>-<sequence>``: unique per device, and sortable as text across restarts."""

    def __init__(self, device_id: str, boot_epoch: int | None = None):
        self.prefix = f"{device_id}-{boot_epoch if boot_epoch is not None else int(time.time()):010d}-"
        self._seq = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{self.prefix}{self._seq:09d}"


class FrameSlot:
    """A bounded hand-over between capture and inference; newest wins, or capture waits, as chosen."""

    def __init__(self, size: int = 1, *, drop_when_behind: bool = True):
        if not 1 <= size <= 2:
            raise ValueError("the frame queue holds 1 or 2 frames")
        self.size, self.drop_when_behind = size, drop_when_behind
        self.dropped = 0
        self._frames: deque[Frame] = deque()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, frame: Frame, stop: threading.Event) -> None:
        with self._cond:
            while len(self._frames) >= self.size:
                if self.drop_when_behind:
                    self._frames.popleft()
                    self.dropped += 1
                else:
                    self._cond.wait(0.1)
                    if stop.is_set():
                        return
            self._frames.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The oldest waiting frame, or None after ``timeout`` (or once closed and empty)."""
        with self._cond:
            if not self._frames and not self._closed:
                self._cond.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def clear(self) -> None:
        with self._cond:
            self._frames.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed_and_empty(self) -> bool:
        with self._cond:
            return self._closed and not self._frames


@dataclass(frozen=True)
class Result:
    frame_id: str
    frame: Frame
    prediction: Prediction
    timings_ms: dict[str, float] = field(default_factory=dict)  # capture, queue, preprocess, inference, postprocess


@dataclass
class PipelineStats:
    inferred: int = 0
    frame_errors: int = 0
    last_error: str = ""


class Pipeline:
    """Runs a camera through a classifier until stopped or the stream ends. ``classifier`` may be swapped live."""

    def __init__(self, camera: Camera, classifier: Classifier, *, device_id: str, mode: Mode = "continuous",
                 target_fps: float = 0.0, queue_size: int = 1, drop_when_behind: bool = True):
        if classifier.preprocess.frame_order != camera.frame_order:
            raise ValueError(f"classifier expects {classifier.preprocess.frame_order} frames, camera gives "
                             f"{camera.frame_order}: create it with frame_order=camera.frame_order")
        self.camera = camera
        self.classifier = classifier  # replaced atomically by the daemon's `model` command
        self.mode = mode
        self.period = 1.0 / target_fps if target_fps > 0 else 0.0
        self.ids = FrameIds(device_id)
        self.slot = FrameSlot(queue_size, drop_when_behind=drop_when_behind)
        self.stats = PipelineStats()
        self._triggers = threading.Semaphore(0)

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def trigger(self) -> None:
        """On-demand mode: classify the next frame captured after this call."""
        self._triggers.release()

    def _capture(self, stop: threading.Event) -> None:
        try:
            for frame in self.camera.frames(stop):
                self.slot.put(frame, stop)
        except Exception:  # the camera wrapper never raises; this is a last guard so inference is told to end
            log.exception("capture thread failed")
        finally:
            self.slot.close()

    def _next_frame(self, stop: threading.Event, heartbeat: Callable[[], None]) -> Frame | None:
        if self.mode == "on_demand":
            while not self._triggers.acquire(timeout=0.5):
                heartbeat()
                if stop.is_set() or self.slot.closed_and_empty:
                    return None
            self.slot.clear()  # the part is under the camera now: older frames show the previous one
        while not stop.is_set():
            frame = self.slot.get(0.5)
            if frame is not None:
                return frame
            heartbeat()
            if self.slot.closed_and_empty:
                return None
        return None

    def run(self, stop: threading.Event, on_result: Callable[[Result], None],
            heartbeat: Callable[[], None] = lambda: None) -> None:
        """Classify frames until ``stop`` is set or a finite source ends; call ``on_result`` for each.

        ``heartbeat`` is called at least every half second while the loop is alive (the systemd watchdog hangs off
        it). On return ``stop`` is set, so the capture thread ends too.
        """
        capture = threading.Thread(target=self._capture, args=(stop,), name="capture", daemon=True)
        capture.start()
        next_at = 0.0
        try:
            while True:
                frame = self._next_frame(stop, heartbeat)
                if frame is None:
                    break
                heartbeat()
                clf = self.classifier
                queued = (time.perf_counter() - frame.monotonic) * 1e3
                try:
                    pred = clf.classify(frame.image)
                except FrameError as e:
                    self.stats.frame_errors += 1
                    self.stats.last_error = str(e)
                    log.warning("frame %d skipped: %s", frame.index, e)
                    continue
                self.stats.inferred += 1
                on_result(Result(frame_id=self.ids.next(), frame=frame, prediction=pred,
                                 timings_ms={"capture": frame.capture_ms, "queue": queued, **pred.timings_ms}))
                if self.period:
                    next_at = max(next_at + self.period, time.monotonic())
                    stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            stop.set()
            capture.join(timeout=5)
