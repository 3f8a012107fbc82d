"""The unit watching itself, from the housekeeping thread: camera state, model errors, and the ``metrics`` message.

- The retained ``status`` must never show a stale camera: a change of camera state republishes it.
- A camera that stays away for ``camera.offline_alert_after_s`` raises one ``camera_offline`` alert per outage, and
  one ``camera_back`` when it returns: whoever was told it went hears that it came back, and after how long.
- Frames the model failed on raise at most one ``model_error`` alert a minute.
- Every ``metrics.interval_s``: rates, latency percentiles per stage, the board's health and the outbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contract import payloads, topics
from edge.alerts import Alert, AlertPolicy
from edge.io.state import LineInterface, LineState
from edge.metrics import StageLatency, cpu_temperature_c, load_average, rss_mb
from edge.mqtt.client import MqttLink
from edge.mqtt.outbox import Outbox
from edge.pipeline import Pipeline
from edge.sources import Camera


@dataclass(frozen=True)
class Watched:
    """What the unit's health is read from: each of the daemon's parts it looks at, and nothing else of it."""

    device_id: str
    started_at: float  # wall clock
    camera: Camera
    pipeline: Pipeline
    latency: StageLatency
    outbox: Outbox
    link: MqttLink
    alerts: AlertPolicy
    line_state: LineState
    line: Sequence[LineInterface]


class Health:
    """``alert`` raises an alert (and keeps it); ``changed`` republishes the retained status."""

    def __init__(self, w: Watched, *, offline_alert_after_s: float, alert: Callable[[Alert, str], None],
                 changed: Callable[[], None]):
        self.w = w
        self.offline_alert_after_s = offline_alert_after_s
        self._alert, self._changed = alert, changed
        self._camera_state = w.camera.state
        self._offline_since: float | None = None
        self._offline_alerted = False
        self._frame_errors_seen = 0
        self._last_metrics = time.monotonic()

    def watch_camera(self, now: float | None = None) -> None:
        camera = self.w.camera
        if camera.state != self._camera_state:
            self._camera_state = camera.state
            self._changed()
        now = time.time() if now is None else now
        if camera.state in ("streaming", "ended"):
            if self._offline_alerted and self._offline_since is not None:
                went = self._offline_since
                self._alert(Alert("camera_back", None, f"{self.w.device_id}:camera_back:{int(went)}",
                                  {"since": topics.iso(went), "offline_s": round(now - went, 1)}), topics.iso(now))
            self._offline_since, self._offline_alerted = None, False
            return
        self._offline_since = self._offline_since or now
        if not self._offline_alerted and now - self._offline_since >= self.offline_alert_after_s:
            self._offline_alerted = True
            key = f"{self.w.device_id}:camera_offline:{int(self._offline_since)}"
            self._alert(Alert("camera_offline", None, key, {"since": topics.iso(self._offline_since),
                                                            "error": camera.stats.last_error}), topics.iso(now))

    def watch_frame_errors(self, now: float | None = None) -> None:
        stats = self.w.pipeline.stats
        errors = stats.frame_errors
        if errors > self._frame_errors_seen:
            now = time.time() if now is None else now
            key = f"{self.w.device_id}:model_error:{int(now // 60)}"  # at most one a minute
            self._alert(Alert("model_error", None, key, {"frame_errors": errors - self._frame_errors_seen,
                                                         "error": stats.last_error}), topics.iso(now))
            self._frame_errors_seen = errors

    def metrics(self) -> payloads.Metrics:
        w, pipeline = self.w, self.w.pipeline
        now = time.monotonic()
        frames, stages = w.latency.take()
        elapsed, self._last_metrics = now - self._last_metrics, now
        depth, nbytes = w.outbox.depth()
        cam = w.camera.stats
        return payloads.Metrics(
            device_id=w.device_id, interval_s=round(elapsed, 3),
            fps=round(frames / elapsed, 3) if elapsed else 0.0, frames=frames, dropped_frames=pipeline.dropped,
            unused_frames=pipeline.unused if pipeline.mode == "on_demand" else None,
            frame_errors=pipeline.stats.frame_errors, latency_ms=stages, cpu_temp_c=cpu_temperature_c(),
            load=load_average(), rss_mb=rss_mb(),
            outbox={"depth": depth, "bytes": nbytes, "shed": w.outbox.shed_counts()},
            mqtt={"reconnects": w.link.outage.reconnects, "dropped_qos0": w.link.stats.dropped_qos0},
            camera={"state": w.camera.state, "reconnects": cam.reconnects, "stalls": cam.stalls},
            alerts_suppressed=w.alerts.suppressed, uptime_s=round(time.time() - w.started_at, 1),
            parts={"judged": pipeline.stats.parts, "missed": pipeline.stats.missed,
                   "pending": pipeline.triggers.pending, "line_refused": w.line_state.refused,
                   "line": [i.name for i in w.line]} if pipeline.judges_parts else None)
