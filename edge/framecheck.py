"""``defect-edge check-framing``: what the model will see at this line, before the unit judges a single part.

For the plant engineer setting a unit up. It runs the unit's own pipeline on the configured camera (or a recording
of the line: ``--source``), finds the next ``--parts`` parts by presence against the belt (the configured ROI and
thresholds), crops each as the unit will (``parts.crop``, ``parts.span``, the manifest's training framing), and
writes what the model saw: each part's crop with its call, the whole frame with the crop's box, and a report of the
framing figures against the training images' with what to change (``docs/framing.md``).

Exit status 0 when the parts are framed like the training images, 1 when they are not (or no part came), 2 for a
bad configuration or model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import framing
from core.classifier import Classifier
from core.images import boxed, encode_jpeg
from core.models import manifest_path
from edge.config import EdgeConfig
from edge.parts import PartSettings, PartVerdict, Presence, PresenceSettings, deciding_frame
from edge.pipeline import Pipeline, Result
from edge.sources import source_from_spec
from edge.sources.base import Camera

MIN_FRAMES_IN_POSITION = 3  # fewer in-position frames a part than this at the camera's rate: a part may be missed


@dataclass(frozen=True)
class Checked:
    lines: list[str]  # the report as printed
    problems: list[str]  # what is unlike training; empty when it is like it
    report: dict[str, Any]  # written as report.json


def _presence(cfg: EdgeConfig) -> Presence:
    return Presence(PresenceSettings.from_config(cfg.parts), roi=cfg.camera.region())


def check(cfg: EdgeConfig, out: Path, *, parts: int = 10, source: str | None = None, timeout_s: float = 120.0
          ) -> Checked:
    """Watch ``parts`` parts pass and write their crops and the report to ``out``."""
    spec = source or cfg.camera.source
    src = source_from_spec(spec, fps=cfg.camera.fps if source is None else 0.0, loop=False,
                           width=cfg.camera.width, height=cfg.camera.height)
    camera = Camera(src, stall_timeout=cfg.camera.stall_timeout_s)
    m = cfg.model
    clf = Classifier(manifest_path(m.models_dir, m.name), num_threads=m.threads, delegate=m.delegate,
                     roi=cfg.camera.region(), frame_order=camera.frame_order)
    settings = PartSettings(presence=_presence(cfg), crop=cfg.parts.crop, span=cfg.parts.span,
                            pixel_threshold=cfg.parts.pixel_threshold, gap_frames=cfg.parts.gap_frames)
    pipe = Pipeline(camera, clf, device_id="check", drop_when_behind=False, parts=settings)
    frames: dict[str, np.ndarray] = {}
    verdicts: list[PartVerdict] = []
    stop = threading.Event()

    def seen(r: Result) -> None:
        frames[r.frame_id] = r.frame.image

    def decided(v: PartVerdict) -> None:
        verdicts.append(v)
        if len(verdicts) >= parts:
            stop.set()

    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        pipe.run(stop, seen, on_part=decided)
    finally:
        timer.cancel()
    return _report(cfg, clf, camera.frame_order, verdicts, frames, out)


def _report(cfg: EdgeConfig, clf: Classifier, order: str, verdicts: list[PartVerdict], frames: dict[str, np.ndarray],
            out: Path) -> Checked:
    out.mkdir(parents=True, exist_ok=True)
    spec = clf.manifest.framing
    span = framing.span_of(spec, cfg.parts.span)
    lines = [f"model {clf.name}: training photos frame their part at span "
             + (f"{spec.span.median:.2f} ({spec.span.p5:.2f}-{spec.span.p95:.2f}), background grey "
                f"{spec.background.median:.0f}, offset {spec.offset.median:.2f}" if spec else
                f"unknown (no framing record: the crop uses {span:.2f}; `defect-convert framing` adds it)"),
             f"{'part':<5} {'verdict':<8} {'p':>6} {'ood':>6} {'frames':>6} {'crop (x,y,side)':<18} {'span':>5} "
             f"{'offset':>6} {'bg':>4}"]
    rows: list[dict[str, Any]] = []
    seen: list[framing.Figures] = []
    for n, v in enumerate(verdicts, 1):
        if not v.part.frames or v.prediction is None:
            lines.append(f"{n:<5} {v.verdict:<8} {v.error}")
            continue
        f = deciding_frame(v.part, cfg.parts.aggregate)
        image = frames.get(f.frame_id)
        c = f.crop
        if image is not None:
            shown = image if c is None else image[c.y:c.y + c.height, c.x:c.x + c.width]
            name = f"part_{n:03d}_{v.verdict}_p{v.prediction.p_defect:.3f}"
            (out / f"{name}.jpg").write_bytes(encode_jpeg(shown, order, 90))
            if c is not None:
                (out / f"{name}_frame.jpg").write_bytes(
                    encode_jpeg(boxed(image, (c.x, c.y, c.width, c.height)), order, 90))
        fig = framing.NOTHING_FOUND if image is None else framing.figures(
            clf.preprocess.source(image, c), pixel_threshold=cfg.parts.pixel_threshold)
        seen.append(fig)
        where = f"{c.x},{c.y},{c.width}" if c else "the ROI"
        ood = "" if f.ood is None else f"{f.ood:.2f}"
        lines.append(f"{n:<5} {v.verdict:<8} {v.prediction.p_defect:>6.3f} {ood:>6} {len(v.part.frames):>6} "
                     f"{where:<18} {fig.span:>5.2f} {fig.offset:>6.2f} {fig.background:>4.0f}")
        rows.append({"part": n, "verdict": v.verdict, "p_defect": round(v.prediction.p_defect, 4), "ood": f.ood,
                     "frames": len(v.part.frames), "crop": None if c is None else [c.x, c.y, c.width, c.height],
                     "framing": fig.as_dict()})
    problems = _advice(cfg, spec, seen, rows)
    if seen:
        med = framing.median_figures(seen)
        lines.append(f"median of {len(seen)} parts: span {med.span:.2f}, offset {med.offset:.2f}, background "
                     f"{med.background:.0f}")
    lines += [f"change: {p}" for p in problems] or ["framed like the training photos: nothing to change"]
    report = {"model": clf.name, "training": spec.model_dump(mode="json") if spec else None, "parts": rows,
              "problems": problems}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    lines.append(f"crops, frames and report.json in {out}")
    return Checked(lines, problems, report)


def _advice(cfg: EdgeConfig, spec: Any, seen: list[framing.Figures], rows: list[dict[str, Any]]) -> list[str]:
    if not seen:
        return ["no part passed in position: check the ROI (it must hold the whole part with a margin), "
                "parts.pixel_threshold against the belt's contrast, and that the belt was empty while learnt"]
    out = framing.compare(framing.median_figures(seen), spec) if spec is not None else []
    few = [r["part"] for r in rows if r["frames"] < MIN_FRAMES_IN_POSITION]
    if len(few) > len(rows) // 2:
        out.append(f"{len(few)} of {len(rows)} parts were in position for fewer than {MIN_FRAMES_IN_POSITION} "
                   f"frames: a faster part would pass unseen; widen the ROI along the belt, raise "
                   f"parts.centre_tolerance (now {cfg.parts.centre_tolerance}) or the camera's fps")
    return out
