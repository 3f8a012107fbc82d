"""Replay: a folder of images or a video file, at a set frame rate, once or looping.

For commissioning a station without a line running, for the demo, and for benchmarks: the unit sees exactly the
frames a camera would have given it. Unreadable images are skipped and counted (the rest continue). ``fps = 0``
delivers frames as fast as they can be read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from core.images import IMAGE_SUFFIXES, ImageError, decode_rgb, list_images, read_encoded
from edge.sources.base import EndOfStream, FrameOrder, FrameSource, SourceError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg"})


class _Pacer:
    """Sleeps so frames come out at ``fps`` on average, without drifting when one frame is late."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at + self.period, now)


class FolderReplay(FrameSource):
    """Images from a folder (or an explicit list of files), in name order, as RGB frames."""

    frame_order: FrameOrder = "RGB"
    live = False

    def __init__(self, paths: list[Path] | Path, *, fps: float = 0.0, loop: bool = False):
        self.paths = list_images(paths) if isinstance(paths, Path) else list(paths)
        self.root = paths if isinstance(paths, Path) else None
        self.fps, self.loop = fps, loop
        self.skipped: list[str] = []  # one line per unreadable file, each reported once
        self._bad: set[int] = set()
        self._pos = 0
        self._pacer = _Pacer(fps)
        self._encoded: np.ndarray | None = None

    @property
    def description(self) -> str:
        return f"folder {self.root}" if self.root else f"{len(self.paths)} image files"

    def open(self) -> None:
        if not self.paths:
            raise SourceError(f"{self.description}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")

    def read(self) -> tuple[np.ndarray, str] | None:
        while True:
            if self._pos >= len(self.paths):
                if not self.loop:
                    raise EndOfStream
                self._pos = 0
            pos, path = self._pos, self.paths[self._pos]
            self._pos += 1
            if pos in self._bad:
                continue
            try:
                data = read_encoded(path)
                image = decode_rgb(data, str(path))
            except ImageError as e:
                self._bad.add(pos)
                self.skipped.append(str(e))
                log.warning("skipped: %s", e)
                if len(self._bad) == len(self.paths):
                    raise EndOfStream from None
                continue
            self._encoded = data
            return image, path.name

    def encoded(self) -> np.ndarray | None:
        return self._encoded

    def wait_turn(self) -> None:
        self._pacer.wait()

    def close(self) -> None:
        """Nothing to release; a reopen continues where the replay was."""


class VideoReplay(FrameSource):
    """A video file decoded with OpenCV; BGR frames, at the file's own rate unless ``fps`` is given."""

    frame_order: FrameOrder = "BGR"
    live = False

    def __init__(self, path: Path, *, fps: float | None = None, loop: bool = False):
        self.path, self.loop = path, loop
        self.fps = fps
        self._cap: cv2.VideoCapture | None = None
        self._pacer = _Pacer(fps or 0.0)
        self._index = 0

    @property
    def description(self) -> str:
        return f"video {self.path}"

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: video file not found")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"{self.path}: not a video OpenCV can decode")
        if self.fps is None:
            native = cap.get(cv2.CAP_PROP_FPS)
            self._pacer = _Pacer(native if 0 < native < 1000 else 0.0)
        self._cap = cap

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._cap is None:
            raise SourceError(f"{self.path}: not open")
        ok, image = self._cap.read()
        if not ok:
            if not self.loop:
                raise EndOfStream
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, image = self._cap.read()
            if not ok:
                raise SourceError(f"{self.path}: cannot rewind the video")
        self._index += 1
        return image, f"{self.path.name}#{self._index}"

    def wait_turn(self) -> None:
        self._pacer.wait()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def replay_for(path: Path, *, fps: float = 0.0, loop: bool = False) -> FrameSource:
    """A folder, an image file or a video file, whichever ``path`` is."""
    if path.is_dir():
        return FolderReplay(path, fps=fps, loop=loop)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderReplay([path], fps=fps, loop=loop)
    return VideoReplay(path, fps=fps or None, loop=loop)
