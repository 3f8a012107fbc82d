"""Deterministic synthetic production-line parts: cast discs, with realistic defects and a pixel mask of each.

Why it exists: the product must train demo models, calibrate int8 conversion, drive the demo and check Grad-CAM
localisation without shipping anyone's data set. Every image is a pure function of ``(seed, index)``, so a test or a
benchmark that names them gets the same pixels on every machine.

A part is a grey cast disc (hub ring, bore, bolt holes, lighting gradient, casting texture) on a dark conveyor, jittered
in position, scale and rotation. A defective part carries one defect kind from :data:`DEFECT_KINDS`; the mask marks
exactly the pixels the defect changed. Only NumPy and OpenCV are used (no TensorFlow), so the edge demo can import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("blowhole", "scratch", "crack", "chipped_rim", "flash")

_AA = cv2.LINE_AA


@dataclass(frozen=True)
class Part:
    """One rendered part: RGB pixels, the defect mask (all False for a good part) and what was drawn."""

    image: np.ndarray  # H x W x 3 uint8, RGB
    mask: np.ndarray  # H x W bool, True where the defect is
    defect: str | None  # one of DEFECT_KINDS, or None for a good part
    center: tuple[float, float]
    radius: float

    @property
    def defective(self) -> bool:
        return self.defect is not None


@dataclass(frozen=True)
class _Geometry:
    cx: float
    cy: float
    radius: float
    angle: float  # radians, rotation of the bolt-hole pattern
    bolts: int
    tone: float  # base grey of the metal, 0..255


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _geometry(rng: np.random.Generator, size: int, center: tuple[float, float] | None) -> _Geometry:
    radius = size * rng.uniform(0.33, 0.41)
    if center is None:
        slack = size / 2 - radius - 2
        cx = size / 2 + rng.uniform(-slack, slack) * 0.6
        cy = size / 2 + rng.uniform(-slack, slack) * 0.6
    else:
        cx, cy = center
    return _Geometry(
        cx=cx,
        cy=cy,
        radius=radius,
        angle=rng.uniform(0, 2 * math.pi),
        bolts=int(rng.choice([4, 5, 6, 8])),
        tone=rng.uniform(120, 175),
    )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark conveyor belt: low grey with a weave of fine noise and faint horizontal banding."""
    base = rng.uniform(25, 50)
    noise = cv2.GaussianBlur(rng.normal(0, 6, (size, size)).astype(np.float32), (0, 0), 1.2)
    bands = 3 * np.sin(np.arange(size, dtype=np.float32) / size * rng.uniform(8, 20) * math.pi)[:, None]
    return np.asarray(np.float32(base) + noise + bands, dtype=np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sand-cast surface: speckle at two scales, so a blowhole is findable but not trivial."""
    fine = cv2.GaussianBlur(rng.normal(0, 9, (size, size)).astype(np.float32), (0, 0), 0.8)
    coarse = cv2.GaussianBlur(rng.normal(0, 14, (size, size)).astype(np.float32), (0, 0), size / 40)
    return fine + coarse


def _metal_mask(g: _Geometry, size: int) -> np.ndarray:
    """Where the casting's material is (disc minus bore and bolt holes), as float coverage in [0, 1]."""
    m = np.zeros((size, size), np.uint8)
    scale = 16  # sub-pixel precision for anti-aliased circles
    c = (round(g.cx * scale), round(g.cy * scale))
    cv2.circle(m, c, round(g.radius * scale), 255, -1, _AA, shift=4)
    cv2.circle(m, c, round(g.radius * 0.22 * scale), 0, -1, _AA, shift=4)
    for k in range(g.bolts):
        a = g.angle + 2 * math.pi * k / g.bolts
        bx, by = g.cx + 0.6 * g.radius * math.cos(a), g.cy + 0.6 * g.radius * math.sin(a)
        cv2.circle(m, (round(bx * scale), round(by * scale)), round(g.radius * 0.08 * scale), 0, -1, _AA, shift=4)
    return m.astype(np.float32) / 255


def _shading(g: _Geometry, rng: np.random.Generator, size: int) -> np.ndarray:
    """Lighting gradient across the part plus the raised hub ring and a rim bevel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = rng.uniform(0, 2 * math.pi)
    grad = ((xx - g.cx) * math.cos(light) + (yy - g.cy) * math.sin(light)) / g.radius
    r = np.hypot(xx - g.cx, yy - g.cy) / g.radius
    hub = 18 * np.exp(-(((r - 0.36) / 0.06) ** 2))
    bevel = -22 * np.clip((r - 0.9) / 0.1, 0, 1)
    return np.asarray(g.tone + 16 * grad + hub + bevel, dtype=np.float32)


def _blowhole(rng: np.random.Generator, img: np.ndarray, g: _Geometry, mask: np.ndarray) -> None:
    for _ in range(int(rng.integers(1, 4))):
        a, rr = rng.uniform(0, 2 * math.pi), g.radius * rng.uniform(0.3, 0.85)
        x, y = g.cx + rr * math.cos(a), g.cy + rr * math.sin(a)
        ax = g.radius * rng.uniform(0.07, 0.13)
        axes = (max(2, round(ax)), max(2, round(ax * rng.uniform(0.6, 1.0))))
        rot = float(rng.uniform(0, 180))
        centre = (round(x), round(y))
        cv2.ellipse(mask, centre, axes, rot, 0, 360, 1, -1)
        cv2.ellipse(img, centre, (axes[0] + 1, axes[1] + 1), rot, 200, 340, (205,), 1, _AA)
        cv2.ellipse(img, centre, axes, rot, 0, 360, (float(rng.uniform(15, 45)),), -1, _AA)


def _scratch(rng: np.random.Generator, img: np.ndarray, g: _Geometry, mask: np.ndarray) -> None:
    a, rr = rng.uniform(0, 2 * math.pi), g.radius * rng.uniform(0.2, 0.6)
    x0, y0 = g.cx + rr * math.cos(a), g.cy + rr * math.sin(a)
    d, length = rng.uniform(0, 2 * math.pi), g.radius * rng.uniform(0.5, 0.9)
    bend = rng.uniform(-0.4, 0.4)
    pts = []
    for t in np.linspace(0, 1, 12):
        dd = d + bend * t
        pts.append((x0 + length * t * math.cos(dd), y0 + length * t * math.sin(dd)))
    poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
    width = max(2, round(g.radius * rng.uniform(0.035, 0.055)))
    cv2.polylines(mask, [poly], False, 1, width + 2)
    colour = float(rng.choice([rng.uniform(230, 255), rng.uniform(10, 40)]))
    cv2.polylines(img, [poly], False, (colour,), width, _AA)


def _crack(rng: np.random.Generator, img: np.ndarray, g: _Geometry, mask: np.ndarray) -> None:
    """A jagged dark random walk from the rim inwards, with a branch."""
    a = rng.uniform(0, 2 * math.pi)
    x, y = g.cx + 0.97 * g.radius * math.cos(a), g.cy + 0.97 * g.radius * math.sin(a)
    heading = a + math.pi + rng.uniform(-0.5, 0.5)
    step = g.radius * 0.05
    main = [(x, y)]
    for _ in range(int(rng.integers(8, 14))):
        heading += rng.uniform(-0.6, 0.6)
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        main.append((x, y))
    k = int(rng.integers(2, len(main) - 2))
    bx, by = main[k]
    bh = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    branch = [(bx, by)]
    for _ in range(int(rng.integers(3, 6))):
        bh += rng.uniform(-0.5, 0.5)
        bx, by = bx + step * math.cos(bh), by + step * math.sin(bh)
        branch.append((bx, by))
    width = max(2, round(g.radius * 0.04))
    for line in (main, branch):
        poly = np.round(np.array(line)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [poly], False, 1, width + 2)
        cv2.polylines(img, [poly], False, (float(rng.uniform(8, 30)),), width, _AA)


def _rim_polygon(rng: np.random.Generator, g: _Geometry, inner: float, outer: float) -> np.ndarray:
    a, span = rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 0.5)
    pts = [(g.cx + g.radius * outer * math.cos(t), g.cy + g.radius * outer * math.sin(t))
           for t in np.linspace(a - span / 2, a + span / 2, 8)]
    depth = rng.uniform(0.0, 0.03)
    pts += [(g.cx + g.radius * (inner + depth * math.sin(9 * t)) * math.cos(t),
             g.cy + g.radius * (inner + depth * math.sin(9 * t)) * math.sin(t))
            for t in np.linspace(a + span / 2, a - span / 2, 10)]
    return np.round(np.array(pts)).astype(np.int32)


def _chipped_rim(rng: np.random.Generator, img: np.ndarray, g: _Geometry, mask: np.ndarray,
                 background: np.ndarray) -> None:
    poly = _rim_polygon(rng, g, inner=rng.uniform(0.70, 0.80), outer=1.05)
    chip = np.zeros_like(mask)
    cv2.fillPoly(chip, [poly], 1)
    disc = np.zeros_like(mask)
    cv2.circle(disc, (round(g.cx), round(g.cy)), round(g.radius) + 1, 1, -1)
    chip &= disc  # only material that was there can break off
    # The broken face is rough and shadowed: background shows through, with a dark fracture edge.
    img[chip > 0] = background[chip > 0]
    edge = cv2.morphologyEx(chip, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    img[edge > 0] = np.minimum(img[edge > 0], 60)
    mask |= chip


def _flash(rng: np.random.Generator, img: np.ndarray, g: _Geometry, mask: np.ndarray) -> None:
    """Excess material squeezed out at the parting line: a thin bright fin beyond the rim."""
    poly = _rim_polygon(rng, g, inner=0.98, outer=rng.uniform(1.10, 1.18))
    fin = np.zeros_like(mask)
    cv2.fillPoly(fin, [poly], 1)
    img[fin > 0] = np.float32(g.tone + 40) + rng.normal(0, 6, int(fin.sum())).astype(np.float32)
    mask |= fin


def render(seed: int, index: int, *, size: int = 256, defect: str | None = None,
           center: tuple[float, float] | None = None) -> Part:
    """Render part ``index`` of series ``seed``: the same arguments always give the same pixels.

    ``defect`` is a kind from :data:`DEFECT_KINDS` or ``None`` for a good part; ``center`` pins the part's centre
    (the video writer uses it to slide parts along the belt).
    """
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {defect!r}; known: {', '.join(DEFECT_KINDS)}")
    rng = _rng(seed, index)
    g = _geometry(rng, size, center)
    background = _background(rng, size)
    metal = _metal_mask(g, size)
    surface = _shading(g, rng, size) + _texture(rng, size)
    img = background * (1 - metal) + surface * metal
    mask = np.zeros((size, size), np.uint8)
    if defect == "blowhole":
        _blowhole(rng, img, g, mask)
    elif defect == "scratch":
        _scratch(rng, img, g, mask)
    elif defect == "crack":
        _crack(rng, img, g, mask)
    elif defect == "chipped_rim":
        _chipped_rim(rng, img, g, mask, background)
    elif defect == "flash":
        _flash(rng, img, g, mask)
    if defect in ("blowhole", "scratch", "crack"):
        mask &= (metal > 0.5).astype(np.uint8)  # a defect drawn over a bolt hole is not on the part
    grey = np.clip(img + rng.normal(0, 2.0, img.shape).astype(np.float32), 0, 255)
    tint = np.array([1.0, 1.0 + rng.uniform(-0.02, 0.02), 1.0 + rng.uniform(-0.04, 0.02)], np.float32)
    rgb = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    return Part(image=rgb, mask=mask.astype(bool), defect=defect, center=(g.cx, g.cy), radius=g.radius)


def sample(seed: int, index: int, *, size: int = 256, defect_rate: float = 0.5) -> Part:
    """Part ``index`` of a series where a share ``defect_rate`` is defective, kinds evenly spread."""
    rng = _rng(seed ^ 0x5EED, index)
    if rng.uniform() >= defect_rate:
        return render(seed, index, size=size)
    return render(seed, index, size=size, defect=DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))])


def iter_parts(seed: int, count: int, *, size: int = 256, defect_rate: float = 0.5) -> Iterator[Part]:
    for i in range(count):
        yield sample(seed, i, size=size, defect_rate=defect_rate)


def write_dataset(out: Path, *, count: int, seed: int = 0, size: int = 256, defect_rate: float = 0.5) -> dict[str, int]:
    """Write ``count`` parts as ``good/`` and ``defect/`` PNGs with masks in ``masks/`` and a ``labels.json``.

    The layout is the one ``defect-convert train`` and the parity check read, so the synthetic set and a user's own
    folder are interchangeable.
    """
    counts = {"good": 0, "defect": 0}
    labels: dict[str, str | None] = {}
    for sub in ("good", "defect", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(iter_parts(seed, count, size=size, defect_rate=defect_rate)):
        cls = "defect" if part.defective else "good"
        name = f"part_{seed}_{i:05d}.png"
        cv2.imwrite(str(out / cls / name), cv2.cvtColor(part.image, cv2.COLOR_RGB2BGR))
        if part.defective:
            cv2.imwrite(str(out / "masks" / name), part.mask.astype(np.uint8) * 255)
        labels[f"{cls}/{name}"] = part.defect
        counts[cls] += 1
    (out / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
    return counts


def write_video(path: Path, *, parts: int = 12, seed: int = 0, size: int = 256, fps: float = 15.0,
                frames_per_part: int = 24, defect_rate: float = 0.35, lead_frames: int = 0,
                gap_frames: int = 0) -> list[dict[str, object]]:
    """Write a clip of parts sliding along a conveyor under a fixed camera, and return per-part ground truth.

    Each part enters from the left, passes the centre of the frame (where a trigger would fire) and leaves right;
    ``frames_per_part`` sets the belt's speed, ``gap_frames`` of empty belt between parts their spacing, and
    ``lead_frames`` of empty belt open the clip (a line starting up). The ground truth is also written beside the
    video as ``<name>.json``: part index, defect kind, and the first frame in which the part is centred.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (size, size))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}: OpenCV has no MJPG writer here")
    truth: list[dict[str, object]] = []
    frame_no = 0

    def empty_belt(index: int, count: int) -> None:
        nonlocal frame_no
        belt = render(seed, index, size=size, center=(-10.0 * size, size / 2)).image  # the part far out of view
        for _ in range(count):
            writer.write(cv2.cvtColor(belt, cv2.COLOR_RGB2BGR))
            frame_no += 1

    try:
        empty_belt(0, lead_frames)
        for i in range(parts):
            kind_rng = _rng(seed ^ 0xF11D, i)
            defect = None
            if kind_rng.uniform() < defect_rate:
                defect = DEFECT_KINDS[int(kind_rng.integers(len(DEFECT_KINDS)))]
            first_full = None
            for f in range(frames_per_part):
                x = -0.5 * size + (2.0 * size) * (f + 0.5) / frames_per_part
                part = render(seed, i, size=size, defect=defect, center=(x, size / 2))
                if abs(x - size / 2) < size * 0.1 and first_full is None:
                    first_full = frame_no
                writer.write(cv2.cvtColor(part.image, cv2.COLOR_RGB2BGR))
                frame_no += 1
            truth.append({"part": i, "defect": defect, "centred_frame": first_full})
            empty_belt(i, gap_frames)
    finally:
        writer.release()
    path.with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return truth
