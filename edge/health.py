"""The unit watching itself, from the housekeeping thread: camera state, model errors, and the ``metrics`` message.

- The retained ``status`` must never show a stale camera: a change of camera state republishes it.
- A camera that stays away for ``camera.offline_alert_after_s`` raises one ``camera_offline`` alert per outage.
- Frames the model failed on raise at most one ``model_error`` alert a minute.
- Every ``metrics.interval_s``: rates, latency percentiles per stage, the board's health and the outbox.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from contract import payloads, topics
from edge.alerts import Alert
from edge.metrics import cpu_temperature_c, load_average, rss_mb

if TYPE_CHECKING:
    from edge.daemon import Daemon


class Health:
    def __init__(self, daemon: Daemon):
        self.d = daemon
        self._camera_state = daemon.camera.state
        self._offline_since: float | None = None
        self._offline_alerted = False
        self._frame_errors_seen = 0
        self._last_metrics = time.monotonic()

    def watch_camera(self, now: float | None = None) -> None:
        d = self.d
        if d.camera.state != self._camera_state:
            self._camera_state = d.camera.state
            d.publish_status()
        now = time.time() if now is None else now
        if d.camera.state in ("streaming", "ended"):
            self._offline_since, self._offline_alerted = None, False
            return
        self._offline_since = self._offline_since or now
        if not self._offline_alerted and now - self._offline_since >= d.cfg.camera.offline_alert_after_s:
            self._offline_alerted = True
            key = f"{d.cfg.device.id}:camera_offline:{int(self._offline_since)}"
            d.publish_alert(Alert("camera_offline", None, key, {"since": topics.iso(self._offline_since),
                                                                "error": d.camera.stats.last_error}),
                            topics.iso(now))

    def watch_frame_errors(self, now: float | None = None) -> None:
        d = self.d
        errors = d.pipeline.stats.frame_errors
        if errors > self._frame_errors_seen:
            now = time.time() if now is None else now
            key = f"{d.cfg.device.id}:model_error:{int(now // 60)}"  # at most one a minute
            d.publish_alert(Alert("model_error", None, key, {"frame_errors": errors - self._frame_errors_seen,
                                                             "error": d.pipeline.stats.last_error}),
                            topics.iso(now))
            self._frame_errors_seen = errors

    def metrics(self) -> payloads.Metrics:
        d = self.d
        now = time.monotonic()
        frames, stages = d.latency.take()
        elapsed, self._last_metrics = now - self._last_metrics, now
        depth, nbytes = d.outbox.depth()
        cam = d.camera.stats
        return payloads.Metrics(
            device_id=d.cfg.device.id, interval_s=round(elapsed, 3),
            fps=round(frames / elapsed, 3) if elapsed else 0.0, frames=frames, dropped_frames=d.pipeline.dropped,
            unused_frames=d.pipeline.unused if d.pipeline.mode == "on_demand" else None,
            frame_errors=d.pipeline.stats.frame_errors, latency_ms=stages, cpu_temp_c=cpu_temperature_c(),
            load=load_average(), rss_mb=rss_mb(),
            outbox={"depth": depth, "bytes": nbytes, "shed": d.outbox.shed_counts()},
            mqtt={"reconnects": d.link.outage.reconnects, "dropped_qos0": d.link.stats.dropped_qos0},
            camera={"state": d.camera.state, "reconnects": cam.reconnects, "stalls": cam.stalls},
            alerts_suppressed=d.alerts.suppressed, uptime_s=round(time.time() - d.started_at, 1),
            parts={"judged": d.pipeline.stats.parts, "missed": d.pipeline.stats.missed,
                   "pending": d.pipeline.triggers.pending, "line_refused": d.line_state.refused,
                   "line": [i.name for i in d.line]} if d.pipeline.judges_parts else None)
