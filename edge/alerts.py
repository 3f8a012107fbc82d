"""Which results become alerts, with hysteresis so one bad part under a stopped camera is one alert, not 300.

After an alert of a kind, that kind is disarmed until the camera has seen ``rearm_after_good_frames`` consecutive
frames without it (a new part came along), or ``repeat_after_s`` has passed (the same part is still there: say so
again). Each alert has a stable dedup key: QoS 1 can deliver twice, and the relay mails each key once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from contract.payloads import AlertKind
from edge.classifier import Prediction


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
