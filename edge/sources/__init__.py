"""Frame sources: one small module per backend behind :class:`~edge.sources.base.FrameSource`.

:func:`source_from_spec` turns the one string a user writes (in ``edge.toml`` or on the command line) into a backend.
Backends are imported only when chosen, so a unit without picamera2 or GStreamer never touches them.
"""

from __future__ import annotations

from pathlib import Path

from edge.sources.base import Camera, EndOfStream, Frame, FrameSource, SourceError, first_frame

__all__ = ["Camera", "EndOfStream", "Frame", "FrameSource", "SourceError", "first_frame", "source_from_spec"]


def source_from_spec(spec: str, *, fps: float = 0.0, loop: bool = False, width: int | None = None,
                     height: int | None = None) -> FrameSource:
    """``picamera2`` or ``picamera2:N``; a V4L2 device under ``/dev/`` (``/dev/videoN``, or the stable
    ``/dev/v4l/by-id/...`` name that survives USB re-enumeration) or a bare index; an ``rtsp://``/``http://`` URL; a
    GStreamer pipeline (anything with `` ! ``); otherwise a path to a folder of images, an image, or a video file."""
    if spec == "picamera2" or spec.startswith("picamera2:"):
        from edge.sources.picamera2 import PiCamera

        num = int(spec.partition(":")[2] or 0)
        return PiCamera(num, fps=fps or None, **{k: v for k, v in (("width", width), ("height", height)) if v})
    if spec.isdigit() or spec.startswith("/dev/") or "://" in spec or " ! " in spec:
        from edge.sources.opencv import OpenCVCamera

        return OpenCVCamera(int(spec) if spec.isdigit() else spec, width=width, height=height, fps=fps or None)
    from edge.sources.replay import replay_for

    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder (and not a camera, URL or GStreamer pipeline)")
    return replay_for(path, fps=fps, loop=loop)
