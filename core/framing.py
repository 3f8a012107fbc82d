"""What the model sees: where the part is in an image, the square crop that frames it as the training images framed
theirs, and the figures that say how an input frames its part (``docs/framing.md``).

A classifier is only as right as its input is like its training images. A part 300 px wide in a 400 px ROI, squashed
to 224², is not what a model trained on tight photos of parts has seen, and its calls on it are mostly wrong. So the
unit crops each part before preprocessing, and one locator serves everyone who needs to know where a part is:

- the converter runs :func:`locate` on the training and evaluation images and records how they frame their part
  (:class:`core.manifest.FramingSpec`: the part's span of the image, its area, its offset from the centre and the
  background's grey level);
- presence finds the part against the learnt empty belt (:func:`locate` with that belt as ``reference``), trigger mode
  and ``classify --locate`` against the image's own border;
- :func:`crop_box` makes the located box square with the training images' margin;
- :func:`figures` measures, with the same locator, the region actually fed to the model, so the unit can compare its
  inputs with the manifest's record (:class:`FramingWatch`) and say when they differ.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from core.manifest import FramingSpec, Spread
from core.preprocess import Roi

# The grey copy the locator works on, at most this wide: a 300 px photo at its own pixels, a 640 px frame at 2 px a
# step. A crop 5 % too wide already changes a model's calls; the comparison costs well under a millisecond.
LOCATE_WIDTH = 320
# The figures (span, area, offset, background) are shares and levels, not edges: a 160-pixel copy gives them to a
# percent, for a third of the cost; training photos and the unit's crops are measured alike.
FIGURES_WIDTH = 160
DEFAULT_SPAN = 0.9  # a model converted before framing was measured: the part's share of the crop's side
# The ring of the grey copy whose median is the background of a lone image: BORDER pixels wide, INSET in from the
# edge, beyond the blur's reach, so a crop with a pixel of belt at its edge reads its own background.
BORDER, INSET = 2, 3


@dataclass(frozen=True)
class Blob:
    """The largest region of changed pixels in a mask, in the mask's pixels."""

    x: int
    y: int
    width: int
    height: int
    share: float  # of the mask's pixels
    cx: float
    cy: float


def largest_blob(changed: np.ndarray) -> Blob | None:
    """The largest 8-connected region of non-zero pixels in ``changed`` (uint8), or None when there is none."""
    count, _, stats, centroids = cv2.connectedComponentsWithStats(changed, connectivity=8)
    if count <= 1:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = (int(v) for v in stats[i])
    return Blob(x, y, w, h, area / changed.size, float(centroids[i][0]), float(centroids[i][1]))


def small_grey(image: np.ndarray, width: int) -> np.ndarray:
    """A blurred grey copy ``width`` pixels wide (float32): what presence and the locator compare. Luma weights
    are applied as if RGB; for finding a part against its background the channel order does not matter."""
    h, w = image.shape[:2]
    size = (width, max(8, round(width * h / w)))
    # Grey first: the averaging then works on a third of the data (the two commute to a grey level).
    grey = image if image.ndim == 2 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, (5, 5), 0).astype(np.float32)


def locate_width(width: int, most: int = LOCATE_WIDTH) -> int:
    """The width of the locator's grey copy of an image ``width`` pixels wide: its own, or a whole number of
    pixels a step, at most ``most`` wide. A whole step is OpenCV's fast averaging (0.1 ms for a 480 px frame,
    against 0.4 at an uneven 1.5 px a step), and the trigger waits on it."""
    return width // -(-width // most)


def _border(grey: np.ndarray) -> np.ndarray:
    i, o = INSET, INSET + BORDER
    inner = grey[i:-i, i:-i] if min(grey.shape[:2]) > 2 * o else grey
    b = BORDER
    return np.concatenate([inner[:b].ravel(), inner[-b:].ravel(), inner[b:-b, :b].ravel(), inner[b:-b, -b:].ravel()])


@dataclass(frozen=True)
class Figures:
    """How an image frames its part, measured by :func:`locate`: what the manifest records for the training
    images and what the unit measures on every crop it feeds."""

    span: float  # the part's longer side / the image's longer side
    area: float  # share of the image's pixels the part covers
    offset: float  # distance of the part's centre from the image's, as a share of its size (largest axis)
    background: float  # grey level of what is not the part (the image's border)

    def as_dict(self) -> dict[str, float]:
        return {"span": round(self.span, 3), "area": round(self.area, 3), "offset": round(self.offset, 3),
                "background": round(self.background, 1)}


NOTHING_FOUND = Figures(span=0.0, area=0.0, offset=0.5, background=0.0)


@dataclass(frozen=True)
class Located:
    box: Roi  # the part's bounding box, in the image's pixels
    figures: Figures


def locate(image: np.ndarray, *, pixel_threshold: int = 30, reference: np.ndarray | None = None,
           width: int | None = None) -> Located | None:
    """The part in ``image`` (H x W x 3 or H x W uint8): the largest blob of pixels that differ by more than
    ``pixel_threshold`` grey levels from the background, or None when nothing does.

    The background is ``reference`` when given (the learnt empty belt, already a grey copy ``width`` wide) and
    otherwise the median of the image's border: a photo of one part has background all round it. The grey copy is
    ``width`` wide (at most the image's own) when given, else :func:`locate_width`'s.
    """
    width = locate_width(image.shape[1]) if width is None else width
    grey = small_grey(image, width if reference is not None else min(width, image.shape[1]))
    background = float(np.median(_border(grey)))
    base = reference if reference is not None else np.float32(background)
    changed = (np.abs(grey - base) > pixel_threshold).astype(np.uint8)
    if reference is None and min(changed.shape) > 4 * INSET:  # an edge of another surface is not the part
        changed[:INSET], changed[-INSET:], changed[:, :INSET], changed[:, -INSET:] = 0, 0, 0, 0
    blob = largest_blob(changed)
    if blob is None:
        return None
    h, w = image.shape[:2]
    sx, sy = w / grey.shape[1], h / grey.shape[0]
    x0, y0 = int(blob.x * sx), int(blob.y * sy)
    x1, y1 = min(w, round((blob.x + blob.width) * sx)), min(h, round((blob.y + blob.height) * sy))
    if reference is not None:
        background = float(np.median(reference[changed == 0])) if (changed == 0).any() else background
    offset = max(abs(blob.cx - grey.shape[1] / 2) / grey.shape[1], abs(blob.cy - grey.shape[0] / 2) / grey.shape[0])
    return Located(Roi(x0, y0, x1 - x0, y1 - y0),
                   Figures(span=max(x1 - x0, y1 - y0) / max(w, h), area=blob.share, offset=offset,
                           background=background))


def figures(image: np.ndarray, *, pixel_threshold: int = 30) -> Figures:
    """How ``image`` (a model's input region, or a training image) frames its part."""
    found = locate(image, pixel_threshold=pixel_threshold, width=FIGURES_WIDTH)
    return found.figures if found else NOTHING_FOUND


def crop_box(box: Roi, span: float, width: int, height: int) -> Roi:
    """The square around ``box`` in which the part spans ``span`` of the side (the training images' framing),
    centred on it and moved, not shrunk, to lie inside a ``width`` x ``height`` frame. A square larger than the
    frame's shorter side is cut to it: the crop stays square, so the part is never squashed."""
    side = min(round(max(box.width, box.height) / max(span, 1e-3)), width, height)
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    x = int(min(max(round(cx - side / 2), 0), width - side))
    y = int(min(max(round(cy - side / 2), 0), height - side))
    return Roi(x, y, side, side)


CARRIER_BORDER = 0.8  # share of a located box's border unlike the belt that makes it a carrier, not a part


@dataclass(frozen=True)
class Carrier:
    box: Roi  # the carrier's own edges, in the image's pixels
    part: Located  # the part on it: its box in the image's pixels, its figures within the carrier


def _tighten(image: np.ndarray, box: Roi, outside: float, inside: float) -> Roi:
    """``box`` with each side moved in, by at most the blur's reach, while its line of pixels is nearer the belt's
    grey than the carrier's: a crop with one line of belt along its edge changes a model's calls (seen: a good
    part's p from 0.13 to 0.49)."""
    region = image[box.y:box.y + box.height, box.x:box.x + box.width]
    grey = region if region.ndim == 2 else cv2.cvtColor(region[:, :, :3], cv2.COLOR_RGB2GRAY)
    x0, y0, x1, y1 = 0, 0, box.width, box.height

    def belt(line: np.ndarray) -> bool:
        m = float(np.median(line))
        return abs(m - outside) < abs(m - inside)

    for _ in range(INSET + BORDER):
        moved = False
        if x1 - x0 > 8 and belt(grey[y0:y1, x0]):
            x0, moved = x0 + 1, True
        if x1 - x0 > 8 and belt(grey[y0:y1, x1 - 1]):
            x1, moved = x1 - 1, True
        if y1 - y0 > 8 and belt(grey[y0, x0:x1]):
            y0, moved = y0 + 1, True
        if y1 - y0 > 8 and belt(grey[y1 - 1, x0:x1]):
            y1, moved = y1 - 1, True
        if not moved:
            break
    return Roi(box.x + x0, box.y + y0, x1 - x0, y1 - y0)


def carried(image: np.ndarray, box: Roi, outside: float, *, pixel_threshold: int = 30) -> Carrier | None:
    """The carrier located at ``box`` and the part on it, or None when ``box`` holds no carrier.

    A round part's bounding box meets the part at four points; the rest of its border is belt. When nearly all of
    the border is unlike the belt (``outside``: its grey level), ``box`` is a carrier (a plate, a tray, a photo on
    a belt) and the part is what differs from the carrier's own surface, which is how training photos taken of
    parts on their carriers frame it.
    """
    region = image[box.y:box.y + box.height, box.x:box.x + box.width]
    if region.shape[0] < 16 or region.shape[1] < 16:
        return None
    # The ring looked at lies a little inside the box, whose edge the blur shares with the belt.
    dx, dy = max(2, box.width // 25), max(2, box.height // 25)
    inset = region[dy:-dy, dx:-dx]
    ring = _border(small_grey(inset, min(FIGURES_WIDTH, inset.shape[1])))
    if float(np.mean(np.abs(ring - outside) > pixel_threshold)) < CARRIER_BORDER:
        return None
    edges = _tighten(image, box, outside, float(np.median(ring)))
    found = locate(inset, pixel_threshold=pixel_threshold, width=FIGURES_WIDTH)
    if found is None:
        return None
    b = found.box
    return Carrier(edges, Located(Roi(box.x + dx + b.x, box.y + dy + b.y, b.width, b.height),
                                  dataclasses.replace(found.figures,
                                                      span=max(b.width, b.height) / max(edges.width, edges.height))))


def part_crop(image: np.ndarray, found: Located, spec: FramingSpec | None, override: float | None, *,
              pixel_threshold: int = 30) -> Roi:
    """The square the model is fed for the part located at ``found`` in ``image``.

    On a carrier (:func:`carried`) whose part spans it as the training photos' parts spanned theirs (within their
    5th to 95th percentile), the carrier itself, squared: that *is* the training photo's framing. Otherwise the
    part, squared with the training images' margin (``override`` when the engineer has set one)."""
    h, w = image.shape[:2]
    span = span_of(spec, override)
    carrier = carried(image, found.box, found.figures.background, pixel_threshold=pixel_threshold)
    if carrier is None or override is not None:
        return crop_box(found.box, span, w, h)
    inner = carrier.part.figures.span
    low, high = (spec.span.p5, spec.span.p95) if spec is not None else (DEFAULT_SPAN, DEFAULT_SPAN)
    if low * (1 - SPAN_SLACK) <= inner <= high * (1 + SPAN_SLACK):
        return crop_box(carrier.box, 1.0, w, h)
    return crop_box(carrier.part.box, span, w, h)


def lone_crop(image: np.ndarray, spec: FramingSpec | None, override: float | None = None, *,
              pixel_threshold: int = 30) -> Roi | None:
    """The crop for the part in a lone image (a whole frame from the line's camera, uploaded or on disk): located
    against the image's own border, framed as the training photos are; None when no part stands out."""
    found = locate(image, pixel_threshold=pixel_threshold)
    return None if found is None else part_crop(image, found, spec, override, pixel_threshold=pixel_threshold)


def span_of(spec: FramingSpec | None, override: float | None) -> float:
    """The part's share of the crop's side: the configured one, else the training images' median, else the
    default."""
    if override is not None:
        return override
    return spec.span.median if spec is not None else DEFAULT_SPAN


def spread(values: list[float]) -> Spread:
    a = np.asarray(values, np.float64)
    p5, median, p95 = (float(v) for v in np.percentile(a, [5, 50, 95]))
    return Spread(p5=round(p5, 4), median=round(median, 4), p95=round(p95, 4))


def measure(images: list[np.ndarray], *, pixel_threshold: int = 30, measured_on: str = "") -> FramingSpec:
    """The framing record of a set of training or evaluation images (the converter's; ``defect-convert framing``)."""
    found = [figures(img, pixel_threshold=pixel_threshold) for img in images]
    if not found:
        raise ValueError("no images to measure framing on")
    return FramingSpec(images=len(found), located=round(sum(f.span > 0 for f in found) / len(found), 4),
                       span=spread([f.span for f in found]), area=spread([f.area for f in found]),
                       offset=spread([f.offset for f in found]), background=spread([f.background for f in found]),
                       pixel_threshold=pixel_threshold, measured_on=measured_on)


# How far the line's median may stray from the training images' range before the unit says so.
SPAN_SLACK = 0.12  # relative, beyond the training images' p5..p95
OFFSET_SLACK = 0.08  # absolute, beyond their p95
BACKGROUND_SLACK = 35.0  # grey levels, beyond their p5..p95


def compare(line: Figures, spec: FramingSpec) -> list[str]:
    """What is unlike the training images in the line's (median) framing, one line each, with what to change;
    empty when the inputs frame their parts as the training images did."""
    out = []
    s = spec.span
    if line.span < s.p5 * (1 - SPAN_SLACK):
        out.append(f"parts span {line.span:.2f} of the model's input where training images' spanned {s.median:.2f} "
                   f"({s.p5:.2f}-{s.p95:.2f}): the model sees too much around the part; crop to the part "
                   "(parts.crop = \"part\") or narrow the ROI")
    elif line.span > s.p95 * (1 + SPAN_SLACK):
        out.append(f"parts span {line.span:.2f} of the model's input where training images' spanned {s.median:.2f} "
                   f"({s.p5:.2f}-{s.p95:.2f}): the part is cut or too tight; lower parts.span or widen the ROI")
    if line.offset > spec.offset.p95 + OFFSET_SLACK:
        out.append(f"parts sit {line.offset:.2f} off the input's centre where training parts sat at most "
                   f"{spec.offset.p95:.2f}: lower parts.centre_tolerance, or let the unit crop to the part")
    b = spec.background
    if not b.p5 - BACKGROUND_SLACK <= line.background <= b.p95 + BACKGROUND_SLACK:
        out.append(f"the background around parts is grey level {line.background:.0f} where training images had "
                   f"{b.median:.0f} ({b.p5:.0f}-{b.p95:.0f}): the model sees the belt around the part (crop to it: "
                   "parts.crop = \"part\"; parts.span = 1.0 if each part sits on a carrier of its own), or it was "
                   "trained on another background (train on photos from this line)")
    return out


def median_figures(items: list[Figures]) -> Figures:
    return Figures(span=float(np.median([f.span for f in items])), area=float(np.median([f.area for f in items])),
                   offset=float(np.median([f.offset for f in items])),
                   background=float(np.median([f.background for f in items])))


class FramingWatch:
    """The last ``window`` parts' framing against the manifest's record. :meth:`add` answers the problems when the
    line has just become unlike the training images (once, until it is like them again: one alert, not one a part).
    """

    def __init__(self, spec: FramingSpec | None, *, window: int = 8, min_parts: int = 5):
        self.spec = spec
        self.window, self.min_parts = window, min_parts
        self._recent: deque[Figures] = deque(maxlen=window)
        self.problems: list[str] = []
        self.parts = 0

    def add(self, fig: Figures) -> list[str] | None:
        self._recent.append(fig)
        self.parts += 1
        if self.spec is None or len(self._recent) < self.min_parts:
            return None
        was_ok = not self.problems
        self.problems = compare(median_figures(list(self._recent)), self.spec)
        return self.problems if self.problems and was_ok else None

    def status(self) -> dict[str, object]:
        """For the unit's status: the line's median framing beside the training images', and what differs."""
        line = median_figures(list(self._recent)).as_dict() if self._recent else None
        trained = None if self.spec is None else {
            "span": self.spec.span.median, "area": self.spec.area.median, "offset": self.spec.offset.median,
            "background": self.spec.background.median}
        state = "unknown" if self.spec is None or len(self._recent) < self.min_parts else \
            "unlike_training" if self.problems else "like_training"
        return {"state": state, "parts": self.parts, "line": line, "trained": trained, "problems": self.problems}
