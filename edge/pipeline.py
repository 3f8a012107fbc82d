"""Capture and inference, overlapped: a capture thread feeds a bounded slot, the inference loop takes from it.

On a live line the newest frame wins: when inference falls behind, the oldest waiting frame is dropped and counted,
so results never lag the conveyor. A replay of recorded frames may instead ask that nothing be dropped
(``drop_when_behind=False``): capture then waits for inference. Not in ``on_demand`` mode: there a replay keeps the
line's clock, as a camera does, frames passing at the recording's pace whether or not a trigger asks for one, so
that trigger mode can be tried on a recording of the line (before, the video froze between triggers, and each
trigger judged whatever frame came next in the file). Modes: ``continuous`` (every frame, or at most
``target_fps``; with :class:`~edge.parts.Presence`, only the frames where a part is in position, one verdict per
part) and ``on_demand`` (each :meth:`Pipeline.trigger` is a part: the frames captured after it, one verdict).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from contract.payloads import TriggerSource
from core.classifier import Classifier, Prediction
from core.framing import Located, locate, part_crop
from core.preprocess import FrameError, Roi
from edge.parts import (
    Part,
    PartFrame,
    PartIds,
    PartSettings,
    PartVerdict,
    Triggers,
    missed,
    verdict_of,
)
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

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


@dataclass(frozen=True)
class Result:
    frame_id: str
    frame: Frame
    prediction: Prediction
    timings_ms: dict[str, float] = field(default_factory=dict)  # capture, queue, preprocess, inference, postprocess
    part_id: str | None = None  # the part this frame was classified for (part modes)
    crop: Roi | None = None  # the region of the frame the model saw, when it was cropped to the part


@dataclass
class PipelineStats:
    inferred: int = 0
    frame_errors: int = 0
    last_error: str = ""
    parts: int = 0
    missed: int = 0


PartCallback = Callable[[PartVerdict], None]


class Pipeline:
    """Runs a camera through a classifier until stopped or the stream ends. ``classifier`` may be swapped live."""

    def __init__(self, camera: Camera, classifier: Classifier, *, device_id: str, mode: Mode = "continuous",
                 target_fps: float = 0.0, queue_size: int = 1, drop_when_behind: bool = True,
                 parts: PartSettings | None = None, locate: bool = False, part_ids: PartIds | None = None):
        if classifier.preprocess.frame_order != camera.frame_order:
            raise ValueError(f"classifier expects {classifier.preprocess.frame_order} frames, camera gives "
                             f"{camera.frame_order}: create it with frame_order=camera.frame_order")
        self.camera = camera
        self.classifier = classifier  # replaced atomically by the daemon's `model` command
        self.mode = mode
        self.period = 1.0 / target_fps if target_fps > 0 else 0.0
        self.ids = FrameIds(device_id)
        self.slot = FrameSlot(queue_size, drop_when_behind=drop_when_behind or mode == "on_demand")
        self.stats = PipelineStats()
        self.parts = parts or PartSettings()
        self.part_ids = part_ids or PartIds(device_id)
        self.triggers = Triggers(self.part_ids, self.parts.max_pending, self.parts.debounce_s)
        # Continuous mode without presence: find the part in each frame and crop to it, as a unit in a part mode
        # would (``classify --locate``, the console's inspect page), instead of feeding the whole ROI or frame.
        self.locate = locate
        self._current: Part | None = None  # presence: the part in position now
        self._gap = 0

    @property
    def dropped(self) -> int:
        """Frames lost because inference was behind. In ``on_demand`` mode none are: a frame no trigger asked for
        is :attr:`unused`, and a trigger whose frame came too late is a ``missed`` part, counted as such."""
        return 0 if self.mode == "on_demand" else self.slot.dropped

    @property
    def unused(self) -> int:
        return self.slot.dropped if self.mode == "on_demand" else 0

    @property
    def judges_parts(self) -> bool:
        return self.mode == "on_demand" or self.parts.presence is not None

    def trigger(self, source: TriggerSource = "api") -> Part:
        """On-demand mode: a part is in position now. Its verdict comes from the frames captured after this call."""
        return self.triggers.add(source)

    def _capture(self, stop: threading.Event) -> None:
        try:
            for frame in self.camera.frames(stop):
                self.slot.put(frame, stop)
        except Exception:  # the camera wrapper never raises; this is a last guard so inference is told to end
            log.exception("capture thread failed")
        finally:
            self.slot.close()

    def _next_frame(self, stop: threading.Event, heartbeat: Callable[[], None]) -> Frame | None:
        while not stop.is_set():
            frame = self.slot.get(0.5)
            if frame is not None:
                return frame
            heartbeat()
            if self.slot.closed_and_empty:
                return None
        return None

    def _crop(self, image: np.ndarray, found: Located | None) -> Roi | None:
        """The square the model is fed for a part located at ``found`` (None: the ROI, or the whole frame)."""
        if self.parts.crop != "part" or found is None:
            return None
        return part_crop(image, found, self.classifier.manifest.framing, self.parts.span,
                         pixel_threshold=self.parts.pixel_threshold)

    def _locate(self, image: np.ndarray) -> Located | None:
        """Trigger mode: the part inside the ROI, against the ROI's own border (no belt is learnt here)."""
        if self.parts.crop != "part":
            return None
        roi = self.classifier.preprocess.roi
        region = image if roi is None else image[roi.y:roi.y + roi.height, roi.x:roi.x + roi.width]
        found = locate(region, pixel_threshold=self.parts.pixel_threshold)
        if found is None or roi is None:
            return found
        b = found.box
        return dataclasses.replace(found, box=Roi(roi.x + b.x, roi.y + b.y, b.width, b.height))

    def _classify(self, frame: Frame, part: Part | None = None, offset: float = 0.0,
                  found: Located | None = None) -> Result | None:
        clf = self.classifier
        queued = (time.perf_counter() - frame.monotonic) * 1e3
        try:
            t0 = time.perf_counter()
            crop = self._crop(frame.image, found)
            framing_ms = (time.perf_counter() - t0) * 1e3
            pred = clf.classify(frame.image, box=crop)
        except FrameError as e:
            self.stats.frame_errors += 1
            self.stats.last_error = str(e)
            log.warning("frame %d skipped: %s", frame.index, e)
            return None
        self.stats.inferred += 1
        result = Result(frame_id=self.ids.next(), frame=frame, prediction=pred,
                        timings_ms={"capture": frame.capture_ms, "queue": queued, **pred.timings_ms,
                                    **({"framing": framing_ms} if part is not None or crop else {})},
                        part_id=part.part_id if part else None, crop=crop)
        if part is not None:
            part.frames.append(PartFrame(result.frame_id, pred.p_defect, offset, crop, pred.familiarity,
                                         frame.captured_at))
            part.first_frame = part.first_frame or frame.monotonic
        return result

    def _decided(self, v: PartVerdict, on_part: PartCallback) -> None:
        self.stats.parts += 1
        self.stats.missed += v.verdict == "missed"
        on_part(v)

    def _triggered(self, stop: threading.Event, heartbeat: Callable[[], None], on_result: Callable[[Result], None],
                   on_part: PartCallback) -> bool:
        """Inspect the next triggered part; False when the loop should end."""
        for late in self.triggers.overflowed():
            self._decided(missed(late, f"{self.parts.max_pending} triggers already waiting for inference"), on_part)
        part = self.triggers.take(0.5)
        if part is None:
            # A finite source that has ended leaves its last, untriggered frame in the slot: with no trigger
            # waiting, nothing more can be judged.
            heartbeat()
            return not (stop.is_set() or self.slot.closed)
        limit = self.parts.max_frame_delay_s
        while len(part.frames) < self.parts.frames_per_trigger:
            frame = self.slot.get(0.05)
            heartbeat()
            if frame is None:
                if stop.is_set() or self.slot.closed_and_empty:
                    self._decided(missed(part, "the unit is stopping"), on_part)
                    return False
                if not part.frames and time.perf_counter() - part.started > limit + 1.0:
                    self._decided(missed(part, "no frame from the camera after the trigger"), on_part)
                    return True
                continue
            if frame.monotonic < part.started:
                continue  # captured before the trigger: what was in position then was not this part
            if not part.frames and frame.monotonic - part.started > limit:
                delay = (frame.monotonic - part.started) * 1e3
                self._decided(missed(part, f"the first frame after the trigger came {delay:.0f} ms later "
                                           f"(limit {limit * 1e3:.0f} ms): the part has moved on"), on_part)
                return True
            result = self._classify(frame, part, found=self._locate(frame.image))
            if result is not None:
                on_result(result)
        self._decided(verdict_of(part, self.parts.aggregate, self.classifier), on_part)
        return True

    def _gated(self, frame: Frame, on_result: Callable[[Result], None], on_part: PartCallback) -> None:
        """Presence mode: classify the frame only if a part is in position; close the part when it has left."""
        presence = self.parts.presence
        assert presence is not None
        seen = presence.observe(frame.image)
        while presence.unjudged:  # parts that passed while the belt was learnt: said, never silently let by
            presence.unjudged -= 1
            self._decided(missed(self.part_ids.next("presence"), "it passed while presence was learning the "
                                 "belt (docs/line.md)"), on_part)
        if seen is not None and seen.in_position:
            if self._current is None:
                self._current = self.part_ids.next("presence", started=frame.monotonic)
            self._gap = 0
            result = self._classify(frame, self._current, seen.offset, seen.found)
            if result is not None:
                on_result(result)
            return
        if self._current is not None:
            self._gap += 1
            if self._gap > self.parts.gap_frames:
                part = self._current
                self._current = None
                self._decided(verdict_of(part, self.parts.aggregate, self.classifier) if part.frames
                              else missed(part, "no frame of the part could be classified"), on_part)

    def run(self, stop: threading.Event, on_result: Callable[[Result], None],
            heartbeat: Callable[[], None] = lambda: None, on_part: PartCallback = lambda v: None) -> None:
        """Classify frames until ``stop`` is set or a finite source ends; call ``on_result`` for each, and
        ``on_part`` for each part's verdict (part modes).

        ``heartbeat`` is called at least every half second while the loop is alive (the systemd watchdog hangs off
        it). On return ``stop`` is set, so the capture thread ends too.
        """
        capture = threading.Thread(target=self._capture, args=(stop,), name="capture", daemon=True)
        capture.start()
        next_at = 0.0
        try:
            while True:
                if self.mode == "on_demand":
                    if not self._triggered(stop, heartbeat, on_result, on_part):
                        break
                    continue
                frame = self._next_frame(stop, heartbeat)
                if frame is None:
                    break
                heartbeat()
                if self.parts.presence is not None:
                    self._gated(frame, on_result, on_part)
                else:
                    result = self._classify(frame, found=self._locate(frame.image) if self.locate else None)
                    if result is not None:
                        on_result(result)
                if self.period:
                    next_at = max(next_at + self.period, time.monotonic())
                    stop.wait(max(0.0, next_at - time.monotonic()))
            if self._current is not None and self._current.frames:  # a replay that ended with a part in view
                self._decided(verdict_of(self._current, self.parts.aggregate, self.classifier), on_part)
                self._current = None
        finally:
            stop.set()
            capture.join(timeout=5)
