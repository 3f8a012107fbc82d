"""One verdict per part: when a part is in the inspection position, which frames it had, and what it was.

A line wants one answer per part, at the moment it passes, not one per frame of a part sliding in and out of view
(each of which the model calls on its own, half-visible ones included). Two ways to know a part is there:

- **presence** (no model, no wiring): a small grey copy of the ROI against the empty belt (:class:`Presence`), learnt
  from the first frames and refreshed slowly from empty ones, kept across restarts and relearnt when it no longer
  fits. The largest blob of changed pixels is the part; it is *in position* when it is wholly inside the ROI (touches
  no edge) and its centre is within ``centre_tolerance`` of the ROI's. A run of in-position frames is one part; only
  those frames are classified, so the model never sees a half part and the unit spends no inference on the empty
  belt.
- **an external trigger** (a part sensor on GPIO, a PLC over Modbus or OPC UA, an MQTT ``cmd/trigger``): the part
  gets its id at the trigger, and the frames captured after it are its frames.

Either way the model is fed the part, not the ROI around it (``crop = "part"``): presence's blob, or in trigger mode
the locator's find inside the ROI, made square with the margin the model's training images had (``docs/framing.md``).

The verdict aggregates the part's frames (``max`` or ``mean`` of p_defect, or the most ``centred`` frame's), through
the same decision rule as a single frame: ``ok``, ``ng``, ``unsure`` (inside the low-confidence band) or ``missed``
(a trigger with no frame in time: counted and answered, never given another part's frame).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from contract.payloads import Aggregate, TriggerSource, Verdict
from core.classifier import Classifier, Prediction, decide
from core.framing import Blob, Figures, Located, largest_blob, locate, small_grey
from core.preprocess import Roi
from core.signature import Familiarity
from edge.config import PartsConfig

log = logging.getLogger(__name__)

Crop = Literal["part", "roi"]


@dataclass(frozen=True)
class PresenceSettings:
    pixel_threshold: int = 30  # grey levels a pixel must differ from the belt by to count as part
    min_area: float = 0.02  # share of the ROI the largest blob must cover to be a part (dust and glare are not)
    centre_tolerance: float = 0.15  # |blob centre - ROI centre| / ROI size, both axes
    learn_frames: int = 30  # frames the empty belt is learnt from
    refresh: float = 0.02  # weight of each empty frame in the belt's running mean
    width: int = 96  # the grey copy's width in pixels; enough to see a part, cheap to compare
    misfit: float = 0.25  # share of the ROI outside the part unlike the belt beyond which the belt no longer fits

    @classmethod
    def from_config(cls, p: PartsConfig) -> PresenceSettings:
        return cls(pixel_threshold=p.pixel_threshold, min_area=p.min_area, centre_tolerance=p.centre_tolerance,
                   learn_frames=p.learn_frames)

    @property
    def stale_frames(self) -> int:
        """Frames a blob may stay exactly where it is before it is taken for belt the learning got wrong (a part
        that stood on it then, or a lasting change of the scene), and the belt is learnt again."""
        return 4 * self.learn_frames


BeltState = Literal["learning", "checking", "loaded", "learnt"]
MODE_SAMPLES = 60  # frames at most in the per-pixel vote of a learning (it costs samples squared)
CHECK_FRAMES = 10  # frames a belt kept from the last run is checked on before it is trusted
LEARN_AT_MOST = 8  # learning goes on, doubling, until a frame looks empty, over this many times learn_frames
# A part spanning more than this share of the ROI along the belt leaves it under a tenth on each side: it is wholly
# inside for a few frames at best, and a faster belt or a part placed a little off lets it cross unjudged.
TIGHT_SPAN = 0.8
BELT_FILE = "belt.npz"  # in the state directory
PASSES_KEPT = 50  # the last passes the margin is judged on, kept with the belt
CROSSED_AT_MOST = 2  # of them, passes never wholly inside the ROI before it is said (glare, a hand: a few)


def learn_belt(greys: list[np.ndarray], level: float) -> np.ndarray:
    """The empty belt from frames of it with parts passing: per pixel, the value most of the frames agree on (within
    ``level`` grey levels). A part passing shows a pixel different values as its texture slides by; the belt shows
    it the same one. The median, used before, took the part's values wherever a part covered a pixel in more than
    half the frames (a restart with parts on the belt): ghosts that never healed."""
    step = max(1, len(greys) // MODE_SAMPLES)
    stack = np.stack(greys[::step]).astype(np.float32)  # (n, h, w)
    votes = np.stack([(np.abs(stack - sample) <= level).sum(axis=0) for sample in stack])  # (n, h, w)
    best = np.take_along_axis(stack, np.argmax(votes, axis=0)[None], axis=0)[0]  # the value most agree with
    agree = np.abs(stack - best) <= level
    belt: np.ndarray = ((stack * agree).sum(axis=0) / agree.sum(axis=0)).astype(np.float32)
    return belt


REFINE_WIDTH = 480  # the part's box is found again at up to this many pixels across (its frame's own, mostly)


@dataclass(frozen=True)
class Sighting:
    """What presence saw in one frame."""

    area: float  # share of the ROI covered by the largest blob
    offset: float  # distance of its centre from the ROI's, as a share of the ROI (0 = centred)
    in_position: bool
    found: Located | None = None  # in position: the part's box in the frame's pixels, at full resolution


@dataclass
class _Pass:
    """Something passing through the ROI: where its centre was first and last (shares of the ROI), and its
    largest width and height in position (shares; 0 while never in position)."""

    first: tuple[float, float]
    last: tuple[float, float] = (0.0, 0.0)
    span: tuple[float, float] = (0.0, 0.0)

    def along(self) -> float:
        """Its span along the way it moved: across the belt a tight ROI costs nothing, along it the frames in
        which the part is wholly inside."""
        moved_x = abs(self.last[0] - self.first[0]) >= abs(self.last[1] - self.first[1])
        return self.span[0] if moved_x else self.span[1]


class Presence:
    """Is a part in the inspection position? No model: a difference against the empty belt.

    The belt is kept in ``store`` (the state directory) when given: a restart uses it at once, checked on its first
    :data:`CHECK_FRAMES` frames, instead of being blind while it learns. It is learnt again, said in one line and in
    :meth:`status`, when it no longer fits (the light changed, the camera moved: ``misfit`` of the ROI outside the
    part unlike it for ``learn_frames`` frames), when a blob has not moved for ``stale_frames`` (a ghost), and on
    :meth:`relearn` (``cmd/learn_belt``). Parts that passed while it was learnt are counted in ``unjudged``: the
    pipeline reports them ``missed`` rather than let them pass unsaid."""

    def __init__(self, settings: PresenceSettings, *, roi: Roi | None = None, store: Path | None = None):
        self.s = settings
        self.roi = roi
        self.store = store
        self._learning: list[np.ndarray] = []
        self.belt: np.ndarray | None = None
        self.state: BeltState = "learning"
        self.reason = "first start: no belt kept from before"
        self.learnt_at: float | None = None
        self.relearnt = 0
        self.unjudged = 0  # parts seen passing while the belt was learnt, not yet reported
        self._checked: list[float] = []
        self._misfits = 0
        self._still: tuple[tuple[int, int, int, int], int] | None = None  # a blob's box, and frames it stayed
        self.asked: str | None = None  # another thread's request to learn again, taken by the next observe()
        self._learn_until = settings.learn_frames
        # Each pass of something through the ROI: the span along the belt of a part seen wholly inside it, or 0
        # for one never inside it (larger than the ROI, or off its centre): the ROI's margin, measured.
        self.passes: deque[float] = deque(maxlen=PASSES_KEPT)
        self.crossed = 0  # passes never in position since the start
        self._pass: _Pass | None = None
        self._said_margin = False
        self._load()

    def _load(self) -> None:
        if self.store is None or not self.store.exists():
            return
        try:
            with np.load(self.store) as saved:
                belt, roi = saved["belt"].astype(np.float32), tuple(int(v) for v in saved["roi"])
                passes = [float(v) for v in saved["passes"]] if "passes" in saved else []
        except (OSError, ValueError, KeyError) as e:
            log.warning("presence: the belt kept in %s cannot be read (%s): learning it", self.store, e)
            return
        if roi != self._roi_key() or belt.ndim != 2 or belt.shape[1] != self.s.width:
            self.reason = "the ROI or the presence width changed since the belt was kept"
            return
        self.belt, self.state, self.reason = belt, "checking", "kept from the last run"
        self.passes.extend(passes)

    def _roi_key(self) -> tuple[int, ...]:
        r = self.roi
        return (-1, -1, -1, -1) if r is None else (r.x, r.y, r.width, r.height)

    def _save(self) -> None:
        if self.store is None or self.belt is None:
            return
        tmp = self.store.with_name(self.store.name + ".tmp.npz")
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, belt=self.belt, roi=np.array(self._roi_key()), passes=np.array(self.passes, np.float32))
            tmp.replace(self.store)
        except OSError as e:
            log.warning("presence: the learnt belt cannot be kept in %s (%s): a restart learns it again", self.store, e)

    def relearn(self, why: str) -> None:
        """Forget the belt and learn it again from the next frames."""
        log.warning("presence: learning the belt again: %s", why)
        self.belt, self.state, self.reason = None, "learning", why
        self._learning.clear()
        self._learn_until = self.s.learn_frames
        self._checked.clear()
        self._misfits, self._still = 0, None
        self.relearnt += 1

    def status(self) -> dict[str, Any]:
        return {"belt": self.state, "why": self.reason, "relearnt": self.relearnt,
                "learnt_at": None if self.learnt_at is None else round(self.learnt_at, 3),
                "part_span": round(float(np.median(spans)), 3) if (spans := self._spans()) else None,
                "crossed": self.crossed, "margin": self.margin_problem(),
                **({"learning": f"{len(self._learning)}/{self._learn_until}"} if self.state == "learning" else {})}

    def margin_problem(self) -> str | None:
        """What is wrong with the ROI's size for the parts seen passing through it, or None: said by
        ``check-config`` (from the belt kept in the state directory), once in the log, and in :meth:`status`."""
        where = "the ROI" if self.roi is None else f"the ROI ({self.roi.width} x {self.roi.height} px)"
        spans = self._spans()
        crossed = len(self.passes) - len(spans)
        said = []
        if crossed > CROSSED_AT_MOST:
            said.append(f"{crossed} of the last {len(self.passes)} things to cross {where} were never wholly inside "
                        "it and near its centre: parts larger than the ROI, or off its centre, pass unjudged")
        span = float(np.median(spans)) if len(spans) >= 5 else 0.0
        if span > TIGHT_SPAN:
            said.append(f"the parts seen span {span:.0%} of {where} along the belt, leaving {(1 - span) / 2:.0%} "
                        "on each side: a part is wholly inside it for a few frames at best")
        return "; ".join(said) + f"; widen it so that parts span at most {TIGHT_SPAN:.0%} of it" if said else None

    def _spans(self) -> list[float]:
        return [p for p in self.passes if p > 0]

    def _passing(self, blob: Blob | None, in_position: bool, h: int, w: int) -> None:
        """Follow a pass through the ROI; at its end, keep its span along the way it moved (0 when it was never
        in position), and say a tight ROI once."""
        if blob is not None and blob.share >= self.s.min_area:
            centre = (blob.cx / w, blob.cy / h)
            if self._pass is None:
                self._pass = _Pass(centre)
            self._pass.last = centre
            if in_position:
                self._pass.span = (max(self._pass.span[0], blob.width / w), max(self._pass.span[1], blob.height / h))
            return
        if self._pass is None:
            return
        self.passes.append(self._pass.along())
        self.crossed += self.passes[-1] == 0
        self._pass = None
        if len(self.passes) % 10 == 0:
            self._save()
        problem = self.margin_problem()
        if problem and not self._said_margin:
            log.warning("presence: %s", problem)
        self._said_margin = problem is not None

    def _region(self, image: np.ndarray) -> np.ndarray:
        if self.roi is None:
            return image
        r = self.roi
        return image[r.y:r.y + r.height, r.x:r.x + r.width]

    @property
    def learning(self) -> bool:
        return self.belt is None

    def _learnt(self) -> bool:
        """The learning frames are in: the belt, kept, and the parts that passed meanwhile, counted; or, when not
        one of the frames looks empty against it, False: parts covered it all along (a slow belt, parts on it at a
        restart), and learning goes on over twice the frames, up to :data:`LEARN_AT_MOST` times ``learn_frames``."""
        frames = self._learning
        belt = learn_belt(frames, self.s.pixel_threshold / 2)
        blobs = [largest_blob((np.abs(grey - belt) > self.s.pixel_threshold).astype(np.uint8)) for grey in frames]
        empty = any(b is None or b.share < self.s.min_area for b in blobs)
        if not empty and len(frames) < LEARN_AT_MOST * self.s.learn_frames:
            self._learn_until = 2 * len(frames)
            return False
        self._learning, self._learn_until = [], self.s.learn_frames
        self.belt = belt
        self.state, self.learnt_at = "learnt", time.time()
        self._save()
        inside = False
        for grey, blob in zip(frames, blobs, strict=True):
            now = blob is not None and self._in_position(blob, *grey.shape)
            self.unjudged += now and not inside
            inside = now
        if not empty:
            log.warning("presence: no frame of %d showed the belt empty; learnt it anyway", len(frames))
        log.info("presence: belt learnt from %d frames%s", len(frames),
                 f"; {self.unjudged} part(s) passed meanwhile, unjudged" if self.unjudged else "")
        return True

    def _in_position(self, blob: Blob, h: int, w: int) -> bool:
        offset = max(abs(blob.cx - w / 2) / w, abs(blob.cy - h / 2) / h)
        inside = blob.x > 0 and blob.y > 0 and blob.x + blob.width < w and blob.y + blob.height < h
        return blob.share >= self.s.min_area and inside and offset <= self.s.centre_tolerance

    def _fits(self, changed: np.ndarray, blob: Blob | None) -> bool:
        """Watch the belt: False (and learning starts again) when it no longer fits the frames, or when a blob
        has stood still for too long."""
        outside = changed.copy()
        h, w = changed.shape
        edges = (blob.x == 0, blob.y == 0, blob.x + blob.width == w, blob.y + blob.height == h) if blob else ()
        if blob is not None and sum(edges) < 3:
            outside[blob.y:blob.y + blob.height, blob.x:blob.x + blob.width] = 0  # a part, not the whole scene
        misfit = float(outside.mean())
        if self.state == "checking":
            self._checked.append(misfit)
            if len(self._checked) >= CHECK_FRAMES:
                if float(np.median(self._checked)) > self.s.misfit / 2:
                    self.relearn(f"the belt kept from the last run does not fit: "
                                 f"{float(np.median(self._checked)):.0%} of it differs")
                    return False
                self.state = "loaded"
        self._misfits = self._misfits + 1 if misfit > self.s.misfit else 0
        if self._misfits >= self.s.learn_frames:
            self.relearn(f"the belt no longer fits: {misfit:.0%} of the ROI outside the part differs from it")
            return False
        box = None if blob is None or blob.share < self.s.min_area else (blob.x, blob.y, blob.width, blob.height)
        if box is None:
            self._still = None
        elif self._still is not None and max(abs(a - b) for a, b in zip(box, self._still[0], strict=True)) <= 1:
            self._still = (self._still[0], self._still[1] + 1)
            if self._still[1] >= self.s.stale_frames:
                self.relearn(f"something has not moved for {self._still[1]} frames: taken for belt")
                return False
        else:
            self._still = (box, 0)
        return True

    def observe(self, image: np.ndarray) -> Sighting | None:
        """The sighting in ``image``; None while the belt is being learnt."""
        if self.asked is not None:
            why, self.asked = self.asked, None
            self.relearn(why)
        region = self._region(image)
        grey = small_grey(region, self.s.width)
        if self.belt is None:
            self._learning.append(grey)
            if len(self._learning) >= self._learn_until:
                self._learnt()
            return None
        changed = (np.abs(grey - self.belt) > self.s.pixel_threshold).astype(np.uint8)
        h, w = changed.shape
        blob = largest_blob(changed)
        if not self._fits(changed, blob):
            return None
        placed = blob is not None and self._in_position(blob, h, w)
        self._passing(blob, placed, h, w)
        if blob is None:
            cv2.accumulateWeighted(grey, self.belt, self.s.refresh)  # an empty belt: follow the light slowly
            return Sighting(0.0, 1.0, False)
        if blob.share < self.s.min_area:
            cv2.accumulateWeighted(grey, self.belt, self.s.refresh, mask=1 - changed)
            return Sighting(blob.share, 1.0, False)
        offset = max(abs(blob.cx - w / 2) / w, abs(blob.cy - h / 2) / h)
        if not placed:
            return Sighting(blob.share, float(offset), False)
        return Sighting(blob.share, float(offset), True, self._box(region, blob))

    def _box(self, region: np.ndarray, blob: Blob) -> Located:
        """The part's box at the frame's own resolution: the grey copy is a few pixels a step, and a crop that is
        5 % too wide already changes a model's calls. The locator runs again, on a window around the blob, against
        the belt scaled up to it."""
        assert self.belt is not None
        rh, rw = region.shape[:2]
        bh, bw = self.belt.shape
        sx, sy = rw / bw, rh / bh
        pad = 2
        x0, y0 = max(0, blob.x - pad), max(0, blob.y - pad)
        x1, y1 = min(bw, blob.x + blob.width + pad), min(bh, blob.y + blob.height + pad)
        fx0, fy0, fx1, fy1 = int(x0 * sx), int(y0 * sy), min(rw, round(x1 * sx)), min(rh, round(y1 * sy))
        window = region[fy0:fy1, fx0:fx1]
        width = min(fx1 - fx0, REFINE_WIDTH)
        height = max(8, round(width * (fy1 - fy0) / (fx1 - fx0)))
        belt = cv2.resize(self.belt[y0:y1, x0:x1], (width, height), interpolation=cv2.INTER_LINEAR)
        found = locate(window, pixel_threshold=self.s.pixel_threshold, reference=belt, width=width)
        ox, oy = (self.roi.x, self.roi.y) if self.roi is not None else (0, 0)
        if found is None:  # the blob, as the grey copy saw it
            return Located(Roi(ox + fx0, oy + fy0, fx1 - fx0, fy1 - fy0),
                           Figures(blob.width / bw, blob.share, 0.0, float(np.median(self.belt))))
        b = found.box
        return dataclasses.replace(found, box=Roi(ox + fx0 + b.x, oy + fy0 + b.y, b.width, b.height))


@dataclass(frozen=True)
class PartSettings:
    """How parts are judged (``[parts]`` in ``edge.toml``)."""

    aggregate: Aggregate = "max"
    frames_per_trigger: int = 1
    max_frame_delay_s: float = 0.1  # a trigger's first frame later than this: the part has moved on (missed)
    max_pending: int = 8  # triggers waiting for inference; more are answered as missed
    debounce_s: float = 0.0  # a trigger from the same source sooner than this after the last is that part again
    gap_frames: int = 1  # presence: frames out of position tolerated inside one part
    presence: Presence | None = None
    # "part": the model sees the located part, cropped square as its training images framed theirs (core/framing.py);
    # "roi": the whole ROI (or frame), for a camera whose window is already framed like the training photos.
    crop: Crop = "part"
    span: float | None = None  # the part's share of the crop's side; None: the manifest's training images' median
    pixel_threshold: int = 30  # the locator's, in trigger mode (presence has its own)

    @classmethod
    def from_config(cls, p: PartsConfig, roi: Roi | None, state_dir: Path | None = None) -> PartSettings:
        """``state_dir``: where presence keeps the belt it learnt (and the passes it saw) across restarts."""
        store = state_dir / BELT_FILE if state_dir is not None else None
        presence = Presence(PresenceSettings.from_config(p), roi=roi, store=store) if p.presence else None
        return cls(aggregate=p.aggregate, frames_per_trigger=p.frames_per_trigger,
                   max_frame_delay_s=p.max_frame_delay_ms / 1e3, max_pending=p.max_pending,
                   debounce_s=(p.max_frame_delay_ms if p.debounce_ms is None else p.debounce_ms) / 1e3,
                   gap_frames=p.gap_frames, presence=presence, crop=p.crop, span=p.span,
                   pixel_threshold=p.pixel_threshold)


@dataclass
class PartFrame:
    frame_id: str
    p_defect: float
    offset: float  # from presence; 0 for triggered frames
    crop: Roi | None = None  # the region the model saw, in frame pixels (None: the ROI or the whole frame)
    familiarity: Familiarity | None = None  # None: the model has no signature
    captured_at: float = 0.0  # wall clock

    @property
    def ood(self) -> float | None:
        """Its distance from the model's training inputs (core/signature.py), scored by whoever first asks: the
        publisher, not the inference loop."""
        return None if self.familiarity is None else self.familiarity.score


@dataclass
class Part:
    """A part being inspected: its id, what started it, and its frames so far."""

    part_id: str
    seq: int
    source: TriggerSource
    started: float  # perf_counter time of the trigger, or of the first in-position frame
    frames: list[PartFrame] = field(default_factory=list)
    first_frame: float | None = None  # perf_counter capture time of its first frame
    opened_at: float = field(default_factory=time.time)  # wall clock, for the record kept until it is published


@dataclass(frozen=True)
class PartVerdict:
    part: Part
    verdict: Verdict
    prediction: Prediction | None  # the aggregated call; None when missed
    error: str | None
    decided: float  # perf_counter time of the verdict

    @property
    def trigger_to_verdict_ms(self) -> float:
        return (self.decided - self.part.started) * 1e3


def aggregate(part: Part, rule: Aggregate) -> float:
    """The part's p_defect from its frames' (there is at least one)."""
    if rule == "mean":
        return float(np.mean([f.p_defect for f in part.frames]))
    return deciding_frame(part, rule).p_defect


def deciding_frame(part: Part, rule: Aggregate) -> PartFrame:
    """The frame that shows the verdict best: the most defective one for ``max``, else the most centred one."""
    if rule == "max":
        return max(part.frames, key=lambda f: f.p_defect)
    return min(part.frames, key=lambda f: f.offset)


def verdict_of(part: Part, rule: Aggregate, clf: Classifier) -> PartVerdict:
    """Decide ``part`` from its frames with the classifier's own single-frame rule, labels and model."""
    p = aggregate(part, rule)
    defective, confidence, low = decide(p, clf.decision)
    prediction = Prediction(
        label=clf.manifest.labels[1] if defective else clf.manifest.labels[0], defective=defective, p_defect=p,
        confidence=confidence, threshold=clf.decision.threshold, low_confidence=low, model=clf.name,
        sha256=clf.manifest.tflite.sha256, timings_ms={})
    call: Verdict = "unsure" if low else "ng" if defective else "ok"
    return PartVerdict(part, call, prediction, None, time.perf_counter())


def missed(part: Part, why: str) -> PartVerdict:
    return PartVerdict(part, "missed", None, why, time.perf_counter())


class PartIds:
    """``<device>-<boot epoch>-p<sequence>``: unique per device like frame ids, with the sequence a PLC reads. The
    sequence goes on from ``last_seq`` (the unit's last before a restart: a PLC polling it for news must see a new
    number), and ``opened`` hears of each part as it is numbered, in order (the daemon keeps it until its verdict is
    published)."""

    def __init__(self, device_id: str, boot_epoch: int | None = None, *, last_seq: int = 0,
                 opened: Callable[[Part], None] = lambda part: None):
        self.prefix = f"{device_id}-{boot_epoch if boot_epoch is not None else int(time.time()):010d}-p"
        self.seq = last_seq
        self._opened = opened
        self._lock = threading.Lock()

    def next(self, source: TriggerSource, started: float | None = None) -> Part:
        with self._lock:
            self.seq += 1
            part = Part(f"{self.prefix}{self.seq:09d}", self.seq, source,
                        time.perf_counter() if started is None else started)
            self._opened(part)
            return part


class Triggers:
    """Triggers waiting for their frames, oldest first and bounded: a storm beyond it is answered as missed.

    Debounced per source: a trigger sooner than ``debounce_s`` after the last one from the same source is that part
    again (a PLC writing twice, a sensor chattering), counted in ``duplicates`` and answered with the part it
    repeats. Two triggers that close would be judged on the same frame: they are not two parts this unit can tell
    apart, and answering the second ``missed`` would, with ``reject_unsure``, pulse the ejector for a good part."""

    def __init__(self, ids: PartIds, max_pending: int, debounce_s: float = 0.0):
        self.ids = ids
        self.max_pending = max_pending
        self.debounce_s = debounce_s
        self.duplicates: dict[str, int] = {}
        self._last: dict[str, Part] = {}
        self._waiting: deque[Part] = deque()
        self._overflow: list[Part] = []
        self._cond = threading.Condition()

    def add(self, source: TriggerSource) -> Part:
        now = time.perf_counter()
        with self._cond:
            last = self._last.get(source)
            if last is not None and now - last.started < self.debounce_s:
                self.duplicates[source] = self.duplicates.get(source, 0) + 1
                return last
            part = self.ids.next(source, started=now)
            self._last[source] = part
            if len(self._waiting) >= self.max_pending:
                self._overflow.append(part)
            else:
                self._waiting.append(part)
            self._cond.notify_all()
        return part

    def take(self, timeout: float) -> Part | None:
        with self._cond:
            if not self._waiting:
                self._cond.wait(timeout)
            return self._waiting.popleft() if self._waiting else None

    def overflowed(self) -> list[Part]:
        with self._cond:
            out, self._overflow = self._overflow, []
            return out

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._waiting)
