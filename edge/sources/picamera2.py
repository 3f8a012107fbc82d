"""Raspberry Pi camera through picamera2 (libcamera).

picamera2 exists only on Raspberry Pi OS (Debian's ``python3-picamera2``; a venv needs ``--system-site-packages``),
so it cannot run here. This adapter is a thin layer of the calls below and nothing else; the tests check it against a
recorded contract of those calls (``tests/contracts/picamera2.json``: what picamera2 0.3 documents for
``Picamera2(n)``, ``global_camera_info()``, ``create_video_configuration``, ``configure``, ``start``,
``capture_array``, ``stop``, ``close``), with a stand-in that records them. The "BGR888" format gives RGB pixel order
in memory (libcamera names formats by register order), which is what the model wants: no channel swap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.sources.base import FrameOrder, FrameSource, SourceError


def _default_factory() -> Any:
    try:
        from picamera2 import Picamera2
    except ImportError as e:
        raise SourceError("picamera2 is not installed: on Raspberry Pi OS `apt install python3-picamera2` and "
                          f"create the venv with --system-site-packages ({e})") from None
    return Picamera2


class PiCamera(FrameSource):
    frame_order: FrameOrder = "RGB"

    def __init__(self, camera: int = 0, *, width: int = 1280, height: int = 960, fps: float | None = None,
                 factory: Any = None):
        self.camera, self.width, self.height, self.fps = camera, width, height, fps
        self._factory = factory
        self._cam: Any = None

    @property
    def description(self) -> str:
        return f"picamera2 camera {self.camera}"

    def open(self) -> None:
        cls = self._factory or _default_factory()
        cameras = cls.global_camera_info()
        if self.camera >= len(cameras):
            raise SourceError(f"{self.description}: not connected ({len(cameras)} camera(s) found)")
        try:
            cam = cls(self.camera)
            controls = {"FrameRate": float(self.fps)} if self.fps else {}
            config = cam.create_video_configuration(main={"size": (self.width, self.height), "format": "BGR888"},
                                                    controls=controls)
            cam.configure(config)
            cam.start()
        except (RuntimeError, OSError) as e:  # libcamera raises RuntimeError when the camera is busy or broken
            raise SourceError(f"{self.description}: cannot start: {e}") from None
        self._cam = cam

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._cam is None:
            raise SourceError(f"{self.description}: not open")
        try:
            return self._cam.capture_array("main"), ""
        except (RuntimeError, OSError) as e:
            raise SourceError(f"{self.description}: capture failed: {e}") from None

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()
