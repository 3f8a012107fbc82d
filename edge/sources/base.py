"""The frame-source interface, and the one wrapper that makes any source survive months beside a conveyor.

A backend (replay, OpenCV, picamera2) implements four small methods and may fail in any of them. :class:`Camera` owns
the policy every backend shares: open with exponential backoff, reopen after a read error, treat "no frame for N
seconds" as a stall (counted, reopened), and never let an exception escape into the inference loop. The state and
counters it keeps are what the daemon reports in ``status`` and ``metrics``.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

FrameOrder = Literal["RGB", "BGR"]


class SourceError(Exception):
    """The source cannot deliver now (device gone, stream broken). The message is one line; the camera retries."""


class EndOfStream(Exception):  # noqa: N818 - a normal end, not an error
    """A finite source (a file, a folder, a non-looping replay) has delivered its last frame."""


@dataclass(frozen=True)
class Frame:
    """One captured image with the times that matter for latency figures."""

    image: np.ndarray  # H x W x 3 (or H x W grey) uint8, in the source's ``frame_order``
    captured_at: float  # wall clock (epoch seconds) when the frame arrived
    monotonic: float  # time.perf_counter() at the same moment, for durations
    capture_ms: float  # time spent reading and decoding this frame
    index: int  # the source's own frame counter since the camera was created
    origin: str = ""  # what the frame came from (a file name for replays), for reports
    # The compressed image ``image`` was decoded from, when the source had one (replayed files): what the frame ring
    # keeps instead of the pixels, a twentieth of their size, decoding to the same pixels on demand.
    encoded: np.ndarray | None = None


class FrameSource(ABC):
    """A backend: open, read one image, close. Failures raise :class:`SourceError`; the end raises EndOfStream."""

    #: the channel order ``read`` returns; preprocessing swaps once if the model wants the other one
    frame_order: FrameOrder = "BGR"
    #: a live camera moves on without us (when inference is behind, the newest frame wins); a replay can wait
    live: bool = True

    @property
    @abstractmethod
    def description(self) -> str:
        """What this source reads, for logs and status (never a password: URLs are shown without credentials)."""

    @abstractmethod
    def open(self) -> None: ...

    def wait_turn(self) -> None:  # noqa: B027 - an optional hook: live cameras have nothing to wait for
        """Block until the next frame is due (replays at a set rate); kept out of the capture time."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray, str] | None:
        """The next image and its origin, or None when none arrived within the backend's short poll interval."""

    @abstractmethod
    def close(self) -> None: ...

    def encoded(self) -> np.ndarray | None:
        """The encoded bytes (1-D uint8) the last ``read`` decoded its image from with
        :func:`core.images.decode_rgb`, if it did; a camera delivers pixels and has none."""
        return None


def first_frame(source: FrameSource, timeout: float) -> np.ndarray:
    """Open ``source``, return its first image and close it: proof, before a unit starts, that the camera delivers.

    Raises :class:`SourceError` (or :class:`EndOfStream` for an empty replay) with the reason.
    """
    source.open()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = source.read()
            if got is not None:
                return got[0]
        raise SourceError(f"{source.description}: no frame within {timeout:.0f} s")
    finally:
        source.close()


@dataclass
class Backoff:
    """Exponential backoff with a ceiling: 0.5 s, 1 s, 2 s ... 30 s, reset by success."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    current: float = field(init=False, default=0.0)

    def next_delay(self) -> float:
        self.current = self.initial if self.current == 0 else min(self.maximum, self.current * self.factor)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


CameraState = Literal["closed", "opening", "streaming", "reconnecting", "ended"]


@dataclass
class CameraStats:
    frames: int = 0
    open_failures: int = 0
    read_errors: int = 0
    stalls: int = 0
    reconnects: int = 0
    last_error: str = ""


class Camera:
    """Any :class:`FrameSource`, made unkillable: yields frames until stopped or the stream truly ends."""

    def __init__(self, source: FrameSource, *, stall_timeout: float = 10.0, backoff: Backoff | None = None):
        self.source = source
        self.stall_timeout = stall_timeout
        self.backoff = backoff or Backoff()
        self.stats = CameraStats()
        self.state: CameraState = "closed"
        self._opened = False

    @property
    def frame_order(self) -> FrameOrder:
        return self.source.frame_order

    def _fail(self, what: str, err: BaseException, stop: threading.Event) -> None:
        """Record a failure, close the backend, and wait out the backoff (or until stopped)."""
        self.stats.last_error = f"{what}: {err}"
        self.state = "reconnecting"
        self._close()
        delay = self.backoff.next_delay()
        log.warning("camera %s: %s; retrying in %.1f s", self.source.description, self.stats.last_error, delay)
        stop.wait(delay)

    def _close(self) -> None:
        if self._opened:
            self._opened = False
            try:
                self.source.close()
            except Exception as e:  # a backend that fails to close must not stop the reconnect
                log.warning("camera %s: close failed: %s", self.source.description, e)

    def _open(self, stop: threading.Event) -> bool:
        self.state = "opening" if self.stats.frames == 0 else "reconnecting"
        try:
            self.source.open()
        except (SourceError, OSError) as e:
            self.stats.open_failures += 1
            self._fail("open failed", e, stop)
            return False
        if self.stats.frames or self.stats.open_failures or self.stats.read_errors or self.stats.stalls:
            self.stats.reconnects += 1
        self._opened = True
        return True

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Yield frames until ``stop`` is set or a finite source ends; every failure is retried, never raised."""
        last_frame = time.monotonic()
        try:
            while not stop.is_set():
                if not self._opened:
                    if not self._open(stop):
                        continue
                    last_frame = time.monotonic()
                try:
                    self.source.wait_turn()
                    t0, wall = time.perf_counter(), time.time()
                    got = self.source.read()
                except EndOfStream:
                    self.state = "ended"
                    return
                except (SourceError, OSError) as e:
                    self.stats.read_errors += 1
                    self._fail("read failed", e, stop)
                    continue
                if got is None:
                    if time.monotonic() - last_frame > self.stall_timeout:
                        self.stats.stalls += 1
                        self._fail("stalled", SourceError(f"no frame for {self.stall_timeout:.0f} s"), stop)
                    continue
                image, origin = got
                now = time.perf_counter()
                last_frame = time.monotonic()
                self.state = "streaming"
                self.backoff.reset()
                yield Frame(image=image, captured_at=wall, monotonic=now, capture_ms=(now - t0) * 1e3,
                            index=self.stats.frames, origin=origin, encoded=self.source.encoded())
                self.stats.frames += 1
        finally:
            self._close()
            if self.state != "ended":
                self.state = "closed"
