"""Frame → model input tensor: the one preprocessing function of the product (``docs/unit.md``).

Everything that turns pixels into a model input goes through :class:`Preprocessor`: the edge's hot path, the
converter's calibration data and parity check, and training. So a model is always fed exactly what it was checked on.

Order of work, chosen so the expensive steps touch as few pixels as possible: ROI crop (a view, no copy) → resize (into
the destination buffer when the model takes raw pixels) → one channel swap if the camera's order differs from the
model's, or the one conversion to grey for a model with one channel → scaling and quantization. For a uint8 model with
input scale 1/255 and zero point 0 the quantized input *is* the pixel, and for int8 with zero point -128 it is the
pixel with its top bit flipped: no float arithmetic happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from core.manifest import InputSpec, PixelScaling

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}
_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8}


class FrameError(ValueError):
    """A frame cannot be turned into an input (wrong shape or dtype, ROI outside it)."""


@dataclass(frozen=True)
class Roi:
    """A region of interest in frame pixels: the part of the image the model should look at."""

    x: int
    y: int
    width: int
    height: int


def pixel_affine(scaling: PixelScaling) -> tuple[float, float]:
    """(factor, offset) such that the model's input value is ``pixel * factor + offset``."""
    if scaling == "unit":
        return 1.0 / 255.0, 0.0
    if scaling == "symmetric":
        return 1.0 / 127.5, -1.0
    return 1.0, 0.0


def scale_pixels(pixels: np.ndarray, scaling: PixelScaling) -> np.ndarray:
    """uint8 pixels → float32 model values. Training uses it on cached, already-resized pixels."""
    factor, offset = pixel_affine(scaling)
    out = pixels.astype(np.float32) * np.float32(factor)
    if offset:
        out += np.float32(offset)
    return out


Plan = Literal["copy", "flip_sign_bit", "float", "quantize"]


def _plan(spec: InputSpec) -> Plan:
    if spec.dtype == "float32":
        return "float"
    factor, offset = pixel_affine(spec.pixel_scaling)
    # q = x / scale + zp = pixel * factor / scale + offset / scale + zp: an identity on pixels when gain is 1.
    gain = factor / spec.scale if spec.scale else 0.0
    shift = offset / spec.scale + spec.zero_point if spec.scale else 0.0
    if abs(gain - 1.0) < 1e-4:
        if spec.dtype == "uint8" and abs(shift) < 1e-3:
            return "copy"
        if spec.dtype == "int8" and abs(shift + 128) < 1e-3:
            return "flip_sign_bit"
    return "quantize"


class Preprocessor:
    """Turns H x W x 3 uint8 frames (or grey H x W ones) into the model input described by an :class:`InputSpec`.

    ``frame_order`` is the channel order the *camera* delivers (OpenCV gives BGR, picamera2 and PIL give RGB); the
    single swap to the model's order happens after the resize, on the smaller image.
    """

    def __init__(self, spec: InputSpec, *, roi: Roi | None = None, frame_order: Literal["RGB", "BGR"] = "RGB"):
        self.spec = spec
        self.roi = roi
        self.frame_order = frame_order
        self.plan: Plan = _plan(spec)
        self._size = (spec.width, spec.height)
        self._interp = _INTERPOLATION[spec.resize]
        self._grey = spec.channels == 1
        self._swap = not self._grey and frame_order != spec.color_order
        # The luma weights apply to R, G and B wherever the camera put them.
        self._to_grey = cv2.COLOR_BGR2GRAY if frame_order == "BGR" else cv2.COLOR_RGB2GRAY
        self._factor, self._offset = pixel_affine(spec.pixel_scaling)
        self._dtype = _DTYPES[spec.dtype]
        # Scratch for the resized pixels when they cannot go straight into the destination; a grey model's colour
        # frame is resized in colour first (three channels of the small image cost less than converting the large one).
        self._pixels = np.empty(self.shape, np.uint8)
        self._colour = np.empty((spec.height, spec.width, 3), np.uint8) if self._grey else self._pixels

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.spec.height, self.spec.width, self.spec.channels)

    def _as_rgb_frame(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype != np.uint8:
            raise FrameError(f"frame dtype is {frame.dtype}; cameras deliver uint8")
        if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
            if self._grey:
                return frame.reshape(frame.shape[:2])  # grey camera, grey model: nothing to convert
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)  # grey camera: same value in every channel
        if frame.ndim == 3 and frame.shape[2] == 4:
            return frame[:, :, :3]  # XRGB/RGBA from picamera2: drop the fourth channel
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise FrameError(f"frame shape {frame.shape} is not H x W x 3, H x W x 4 or H x W")
        return frame

    def _crop(self, frame: np.ndarray, box: Roi | None = None) -> np.ndarray:
        r = box or self.roi
        if r is None:
            return frame
        h, w = frame.shape[:2]
        if r.x < 0 or r.y < 0 or r.width <= 0 or r.height <= 0 or r.x + r.width > w or r.y + r.height > h:
            raise FrameError(f"{'crop' if box else 'ROI'} {r.x},{r.y} {r.width}x{r.height} does not fit a {w}x{h} "
                             "frame")
        return frame[r.y:r.y + r.height, r.x:r.x + r.width]

    def source(self, frame: np.ndarray, box: Roi | None = None) -> np.ndarray:
        """Check ``frame`` and return the region the model looks at (a view): ``box`` when given (the part, located
        in this frame: :mod:`core.framing`), else the ROI, else the whole frame. Every :class:`FrameError` comes
        from here, before any destination is touched: an exception whose traceback held a view of the interpreter's
        input buffer would block every later ``invoke()``."""
        return self._crop(self._as_rgb_frame(frame), box)

    def pixels(self, frame: np.ndarray, out: np.ndarray | None = None, box: Roi | None = None) -> np.ndarray:
        """Crop, resize and reorder ``frame`` into uint8 pixels of the model's size (``out`` if given)."""
        return self._resized(self.source(frame, box), out)

    def _resized(self, src: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        dst = self._pixels if out is None else out
        if self._grey:
            flat = dst.reshape(dst.shape[:2])  # a view: OpenCV writes H x W, the model reads H x W x 1
            if src.ndim == 2:
                self._resize(src, flat)
            else:
                cv2.cvtColor(self._resize(src, self._colour), self._to_grey, dst=flat)
            return dst
        self._resize(src, dst)
        if self._swap:
            cv2.cvtColor(dst, cv2.COLOR_RGB2BGR, dst=dst)
        return dst

    def _resize(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if src.shape[:2] == (self.spec.height, self.spec.width):
            np.copyto(dst, src)
        else:
            cv2.resize(src, self._size, dst=dst, interpolation=self._interp)
        return dst

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Write the model input for ``frame`` into ``out`` (H x W x C of the model's dtype) and return it.

        Pass the interpreter's own input buffer as ``out`` to avoid every copy but the resize itself.
        """
        return self.fill(self.source(frame), np.empty(self.shape, self._dtype) if out is None else out)

    def fill(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the model input for a region from :meth:`source` into ``out``."""
        if self.plan == "copy":
            self._resized(src, out)
        elif self.plan == "flip_sign_bit":
            np.bitwise_xor(self._resized(src, None), np.uint8(0x80), out=out.view(np.uint8))
        elif self.plan == "float":
            np.multiply(self._resized(src, None), np.float32(self._factor), out=out, casting="unsafe")
            if self._offset:
                out += np.float32(self._offset)
        else:
            x = self._resized(src, None).astype(np.float32) * np.float32(self._factor) + np.float32(self._offset)
            q = np.rint(x / np.float32(self.spec.scale)) + self.spec.zero_point
            info = np.iinfo(np.dtype(self.spec.dtype))
            np.copyto(out, np.clip(q, info.min, info.max), casting="unsafe")
        return out
