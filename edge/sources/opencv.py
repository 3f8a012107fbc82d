"""OpenCV capture: a USB/V4L2 camera (index, ``/dev/videoN`` or ``/dev/v4l/by-id/...``), a GStreamer pipeline, or an
RTSP/HTTP stream.

Jetson CSI cameras come through GStreamer, e.g. ``nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080
! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1``. Network streams get
open and read timeouts, so a camera that goes silent makes ``read`` fail (and the camera reconnect) instead of hanging.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from core.images import quiet_opencv
from edge.sources.base import FrameOrder, FrameSource, SourceError

quiet_opencv()

_CREDENTIALS = re.compile(r"(?<=://)[^/@]+@")


def has_gstreamer() -> bool:
    """Whether this OpenCV was built with GStreamer. pip's opencv-python-headless is not; JetPack's OpenCV is."""
    return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


def redact(target: str) -> str:
    """A URL without its user:password, for logs and status."""
    return _CREDENTIALS.sub("***@", target)


class OpenCVCamera(FrameSource):
    frame_order: FrameOrder = "BGR"

    def __init__(self, target: str | int, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, timeout_ms: int = 5000):
        self.target = target
        self.width, self.height, self.fps = width, height, fps
        self.timeout_ms = timeout_ms
        self._cap: cv2.VideoCapture | None = None

    @property
    def description(self) -> str:
        return f"opencv {redact(str(self.target))}"

    def _api(self) -> int:
        t = self.target
        if isinstance(t, int) or t.startswith("/dev/"):
            return cv2.CAP_V4L2
        if " ! " in t:
            return cv2.CAP_GSTREAMER
        if "://" in t:
            return cv2.CAP_FFMPEG
        return cv2.CAP_ANY

    def open(self) -> None:
        api = self._api()
        if api == cv2.CAP_GSTREAMER and not has_gstreamer():
            raise SourceError(f"{self.description}: this OpenCV {cv2.__version__} was built without GStreamer (pip's "
                              "opencv-python-headless never is); on a Jetson use JetPack's OpenCV (README: cameras)")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms] \
            if api == cv2.CAP_FFMPEG else []
        cap = cv2.VideoCapture(self.target, api, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.description}: cannot open (unplugged, busy, or no backend for it)")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                            (cv2.CAP_PROP_FPS, self.fps)):
            if value:
                cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one queued seconds ago
        self._cap = cap

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._cap is None:
            raise SourceError(f"{self.description}: not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceError(f"{self.description}: no frame (camera unplugged or stream interrupted)")
        return image, ""

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
