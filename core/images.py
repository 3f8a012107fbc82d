"""Reading still images from disk as RGB frames, with one clear error for a file that is not one.

Used by ``defect-edge classify``, the folder replay source and the converter's calibration and parity sets, so every
part of the product agrees on what an image file is and how a corrupt one is reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np


def quiet_opencv() -> None:
    """OpenCV and its FFmpeg print their own warnings for every corrupt file or refused connection; the product
    reports each in one line of its own instead."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when a capture opens
    # OpenCV 5 moved it to cv2.utils.logging; 4.x (4.11 is the last with NumPy 1 wheels, which a Raspberry Pi with
    # Debian's picamera2 needs) has cv2.setLogLevel. LOG_LEVEL_ERROR is 2 in both.
    logging = getattr(cv2.utils, "logging", None)
    (logging if logging is not None else cv2).setLogLevel(2)


quiet_opencv()

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


class ImageError(ValueError):
    """An image file cannot be read or decoded."""


def read_encoded(path: Path) -> np.ndarray:
    """The bytes of image file ``path``, undecoded (a 1-D uint8 array), or :class:`ImageError` saying why not."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None


def read_rgb(path: Path) -> np.ndarray:
    """Decode ``path`` into an H x W x 3 uint8 RGB array (grey images are expanded)."""
    return decode_rgb(read_encoded(path), str(path))


def decode_rgb(data: np.ndarray | bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes → H x W x 3 uint8 RGB: the one decoding, so a file gives the same pixels whether the unit,
    ``classify`` or the console's inspect page reads it."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if buf.size == 0:
        raise ImageError(f"{name}: empty file")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{name}: not a decodable image ({buf.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so runs are repeatable."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def iter_readable(paths: list[Path], on_error: Callable[[Path, str], None]) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield (path, frame) for each readable image; call ``on_error(path, one_line_reason)`` for each that is not."""
    for p in paths:
        try:
            yield p, read_rgb(p)
        except ImageError as e:
            on_error(p, str(e))


def encode_jpeg(image: np.ndarray, order: str, quality: int) -> bytes:
    """A frame (``order`` RGB or BGR) as JPEG bytes: snapshots, feedback frames."""
    bgr = image if order == "BGR" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return bytes(buf.tobytes())


def boxed(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of ``image`` with ``box`` (x, y, width, height) outlined: the whole frame beside the crop the model
    saw, so a person sees where on the belt the part was and what was left out."""
    out = image.copy()
    x, y, w, h = box
    thickness = max(2, round(max(image.shape[:2]) / 300))
    cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thickness)
    return out
