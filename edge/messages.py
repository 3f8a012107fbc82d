"""What the unit says about a frame, a part or an alert, as the contract's messages: the one mapping from the
unit's own objects (a prediction, a part's verdict, an alert) to :mod:`contract.payloads`.

Pure functions, apart from the clock for a missed part's time: the daemon decides when and where a message goes (the
outbox, the publisher's batch), this module only what it says, so the mapping is read and tested in one place.
"""

from __future__ import annotations

import time
from typing import Any

from contract import payloads, topics
from contract.payloads import Aggregate
from core.classifier import Prediction
from core.preprocess import Roi
from edge.alerts import Alert
from edge.parts import PartVerdict, deciding_frame


def box(crop: Roi | None) -> tuple[int, int, int, int] | None:
    """A crop as messages carry it: x, y, width, height in the frame's pixels."""
    return None if crop is None else (crop.x, crop.y, crop.width, crop.height)


def familiarity(ood: float | None, limit: float | None) -> dict[str, Any]:
    """The ``ood``/``unfamiliar`` fields, present only when the model has a signature to measure them against."""
    if ood is None or limit is None:
        return {}
    return {"ood": round(ood, 4), "unfamiliar": ood > limit}


def alert(device_id: str, a: Alert, ts: str) -> payloads.Alert:
    return payloads.Alert(device_id=device_id, ts=ts, kind=a.kind, frame_id=a.frame_id, dedup_key=a.dedup_key,
                          **a.detail)


def result(device_id: str, *, ts: str, frame_id: str, p: Prediction, timings_ms: dict[str, float],
           part_id: str | None, model: payloads.ModelRef, crop: Roi | None,
           ood_limit: float | None) -> payloads.Result:
    """One frame's call."""
    return payloads.Result(
        device_id=device_id, ts=ts, frame_id=frame_id, label=p.label, defective=p.defective,
        p_defect=round(p.p_defect, 6), confidence=round(p.confidence, 6), threshold=p.threshold,
        low_confidence=p.low_confidence, model=model, timings_ms={k: round(v, 3) for k, v in timings_ms.items()},
        part_id=part_id, crop=box(crop), **familiarity(p.ood, ood_limit))


def part(device_id: str, v: PartVerdict, *, rule: Aggregate, model: payloads.ModelRef,
         ood_limit: float | None) -> payloads.Part:
    """A part's verdict, stamped with its deciding frame's capture time (now, for a part that had no frame). Its
    framing figures are added later, by whoever measures them."""
    part, p = v.part, v.prediction
    decider = deciding_frame(part, rule) if part.frames else None
    started = part.first_frame
    return payloads.Part(
        device_id=device_id, ts=topics.iso(decider.captured_at if decider else time.time()), part_id=part.part_id,
        seq=part.seq, trigger=part.source, verdict=v.verdict, aggregate=rule,
        frames=[payloads.PartFrame(frame_id=f.frame_id, p_defect=round(f.p_defect, 6)) for f in part.frames],
        frame_id=decider.frame_id if decider else None, label=p.label if p else None,
        defective=p.defective if p else None, p_defect=round(p.p_defect, 6) if p else None,
        confidence=round(p.confidence, 6) if p else None, threshold=p.threshold if p else None,
        low_confidence=p.low_confidence if p else None, model=model, error=v.error,
        timings_ms={"trigger_to_verdict": round(v.trigger_to_verdict_ms, 3),
                    **({"trigger_to_first_frame": round((started - part.started) * 1e3, 3)}
                       if started is not None else {})},
        crop=box(decider.crop) if decider else None,
        **familiarity(decider.ood if decider else None, ood_limit))
