"""Which results become alerts, with hysteresis so one bad part under a stopped camera is one alert, not 300.

When the unit judges parts (``docs/line.md``), alerts are per part instead: one per defective or unsure part.

After an alert of a kind, that kind is disarmed until the camera has seen ``rearm_after_good_frames`` consecutive
frames without it (a new part came along), or ``repeat_after_s`` has passed (the same part is still there: say so
again). Each alert has a stable dedup key: QoS 1 can deliver twice, and the relay mails each key once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from contract.topics import AlertKind
from core.classifier import Prediction


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    frame_id: str | None
    dedup_key: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Arm:
    armed: bool = True
    clean: int = 0
    fired_at: float = 0.0


class Sampler:
    """Which calls without an alert (frames; OK parts when the unit judges parts) also send their snapshot: an even
    ``share`` of them (every 1/share-th call, not a random draw, so a test and a plant see the same), at most
    ``per_minute`` a minute. The console's review queue needs confident calls too, or a silent miss is never seen
    by a person."""

    def __init__(self, share: float, per_minute: int):
        self.share, self.per_minute = share, per_minute
        self._calls = 0
        self._sent: list[float] = []

    def take(self, now: float | None = None) -> bool:
        if self.share <= 0 or self.per_minute <= 0:
            return False
        now = time.monotonic() if now is None else now
        self._calls += 1
        if math.floor(self._calls * self.share) == math.floor((self._calls - 1) * self.share):
            return False  # not this call's turn: the share is counted, not accumulated (no float drift)
        self._sent = [t for t in self._sent if now - t < 60.0]
        if len(self._sent) >= self.per_minute:
            return False
        self._sent.append(now)
        return True


class AlertPolicy:
    def __init__(self, device_id: str, *, on_defect: bool = True, on_low_confidence: bool = True,
                 rearm_after_good_frames: int = 3, repeat_after_s: float = 300.0):
        self.device_id = device_id
        self.enabled = {"defect": on_defect, "low_confidence": on_low_confidence}
        self.rearm_after = rearm_after_good_frames
        self.repeat_after_s = repeat_after_s
        self._arms = {"defect": _Arm(), "low_confidence": _Arm()}
        self.suppressed = 0  # alerts held back by hysteresis, reported in metrics

    def on_result(self, frame_id: str, pred: Prediction, now: float | None = None) -> list[Alert]:
        now = time.monotonic() if now is None else now
        out = []
        checks: tuple[tuple[AlertKind, bool], ...] = (("defect", pred.defective),
                                                      ("low_confidence", pred.low_confidence))
        for kind, hit in checks:
            arm = self._arms[kind]
            if not hit:
                arm.clean += 1
                if arm.clean >= self.rearm_after:
                    arm.armed = True
                continue
            arm.clean = 0
            if not self.enabled[kind]:
                continue
            if arm.armed or (self.repeat_after_s and now - arm.fired_at >= self.repeat_after_s):
                arm.armed, arm.fired_at = False, now
                out.append(Alert(kind, frame_id, f"{self.device_id}:{kind}:{frame_id}",
                                 {"label": pred.label, "p_defect": round(pred.p_defect, 6),
                                  "confidence": round(pred.confidence, 6), "threshold": pred.threshold,
                                  "model": pred.model}))
            else:
                self.suppressed += 1
        return out

    def on_part(self, part_id: str, frame_id: str, pred: Prediction) -> list[Alert]:
        """A part's verdict: each part is its own, so no hysteresis, and its id keys the alert."""
        checks: tuple[tuple[AlertKind, bool], ...] = (("defect", pred.defective),
                                                      ("low_confidence", pred.low_confidence))
        return [Alert(kind, frame_id, f"{self.device_id}:{kind}:{part_id}",
                      {"label": pred.label, "p_defect": round(pred.p_defect, 6),
                       "confidence": round(pred.confidence, 6), "threshold": pred.threshold, "model": pred.model,
                       "part_id": part_id})
                for kind, hit in checks if hit and self.enabled[kind]]


class Streak:
    """``unfamiliar_input``: one alert when ``length`` inputs in a row score above the model's threshold (one odd
    frame is not a new kind of part; a run of them is), re-armed after as many familiar ones."""

    def __init__(self, length: int):
        self.length = length
        self._run = 0
        self._familiar = 0
        self.armed = True
        self.unfamiliar = 0  # inputs above the threshold, for status

    def add(self, unfamiliar: bool) -> bool:
        """Count one input; True when it completes a streak that is to be alerted."""
        if not unfamiliar:
            self._run = 0
            self._familiar += 1
            if self._familiar >= self.length:
                self.armed = True
            return False
        self.unfamiliar += 1
        self._familiar = 0
        self._run += 1
        if self._run >= self.length and self.armed:
            self.armed = False
            return True
        return False
