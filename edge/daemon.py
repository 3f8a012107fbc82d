"""``defect-edge run``: the unit's main process, beside the conveyor for months (DESIGN §4-6, §9).

Threads: the inference loop (main thread, pings the systemd watchdog), the capture thread (inside the pipeline),
paho's network thread, the outbox drainer, and a housekeeping thread (metrics, history flush and pruning, camera
offline alerts, systemd STATUS). Nothing the broker or the camera does can end it; SIGTERM stops it within 5 s,
after flushing what it can and publishing ``available=offline``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from paho.mqtt.properties import Properties

from edge.alerts import Alert, AlertPolicy
from edge.classifier import Classifier
from edge.config import EdgeConfig
from edge.errors import USER_ERRORS
from edge.gradcam.service import GradcamService, Outcome
from edge.history import History
from edge.metrics import StageLatency, cpu_temperature_c, load_average, rss_mb
from edge.models import manifest_path
from edge.mqtt import topics
from edge.mqtt.client import MqttLink
from edge.mqtt.commands import (
    CommandError,
    CommandRouter,
    FeedbackArgs,
    GradcamArgs,
    ModelArgs,
    ThresholdArgs,
    TriggerArgs,
)
from edge.mqtt.homeassistant import discovery_messages
from edge.mqtt.outbox import Outbox
from edge.pipeline import Pipeline, Result
from edge.ringbuffer import Buffered, FrameRing
from edge.sources import Camera
from edge.systemd import Notifier

log = logging.getLogger(__name__)

STOP_WITHIN_S = 5.0


def _version() -> str:
    try:
        return metadata.version("defect-inspection")
    except metadata.PackageNotFoundError:
        return "unknown"


def jpeg(image: np.ndarray, order: str, quality: int) -> bytes:
    bgr = image if order == "BGR" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class Daemon:
    def __init__(self, cfg: EdgeConfig):
        self.cfg = cfg
        self.started_at = time.time()
        self.stop_event = threading.Event()
        self.notifier = Notifier()
        state = cfg.state.dir
        state.mkdir(parents=True, exist_ok=True)
        db = state / "state.db"
        self.outbox = Outbox(db, max_bytes=int(cfg.state.outbox_max_mb * 1024 * 1024))
        self.history = History(db, retention_days=cfg.state.results_retention_days,
                               max_rows=cfg.state.results_max_rows)
        self.camera = Camera(cfg.camera.frame_source(), stall_timeout=cfg.camera.stall_timeout_s)
        self.pipeline = Pipeline(self.camera, self._load_classifier(cfg.model.name), device_id=cfg.device.id,
                                 mode=cfg.inference.mode, target_fps=cfg.inference.target_fps,
                                 queue_size=cfg.inference.queue_size,
                                 drop_when_behind=self.camera.source.live)
        self.ring = FrameRing(max_frames=cfg.state.ring_frames, max_bytes=int(cfg.state.ring_max_mb * 1024 * 1024))
        a = cfg.alerts
        self.alerts = AlertPolicy(cfg.device.id, on_defect=a.on_defect, on_low_confidence=a.on_low_confidence,
                                  rearm_after_good_frames=a.rearm_after_good_frames, repeat_after_s=a.repeat_after_s)
        self.latency = StageLatency()
        self.router = CommandRouter(cfg.device.id, self, self._reply)
        self.link = MqttLink(cfg, self.outbox, on_command=self.router.handle, status=self.status_payload,
                             discovery=self._discovery)
        g = cfg.gradcam
        self.gradcam = GradcamService(lambda: self.classifier.manifest_path, self._gradcam_done,
                                      roi=cfg.camera.region(),
                                      threads=g.threads, nice=g.nice, idle_timeout_s=g.idle_timeout_s,
                                      request_timeout_s=g.request_timeout_s, alpha=g.alpha,
                                      jpeg_quality=g.jpeg_quality) if g.enabled else None
        self._swap_lock = threading.Lock()
        self._ready = False
        self._offline_since: float | None = None
        self._status_camera_state = self.camera.state
        self._offline_alerted = False
        self._frame_errors_seen = 0
        self._published_results = 0
        self._last_metrics = time.monotonic()

    # -- model -----------------------------------------------------------------------------------------------
    def _load_classifier(self, name: str) -> Classifier:
        m = self.cfg.model
        clf = Classifier(manifest_path(m.models_dir, name), num_threads=m.threads, delegate=m.delegate,
                         roi=self.cfg.camera.region(), frame_order=self.camera.frame_order)
        if m.threshold is not None or m.low_confidence_band is not None:
            clf.decision = clf.decision.model_copy(update={
                k: v for k, v in (("threshold", m.threshold), ("low_confidence_band", m.low_confidence_band))
                if v is not None})
        return clf

    @property
    def classifier(self) -> Classifier:
        return self.pipeline.classifier

    # -- payloads --------------------------------------------------------------------------------------------
    def status_payload(self) -> bytes:
        clf, cam = self.classifier, self.camera
        man = clf.manifest
        return topics.dumps(topics.envelope(
            self.cfg.device.id, software_version=_version(), started_at=topics.iso(self.started_at),
            uptime_s=round(time.time() - self.started_at, 1), mode=self.cfg.inference.mode,
            model={"name": man.name, "quantization": man.quantization, "sha256": man.tflite.sha256,
                   "architecture": man.architecture, "runtime": clf.runtime.name, "threads": clf.threads,
                   "threshold": clf.decision.threshold, "low_confidence_band": list(clf.decision.low_confidence_band)},
            camera={"source": cam.source.description, "state": cam.state, "frames": cam.stats.frames,
                    "reconnects": cam.stats.reconnects, "stalls": cam.stats.stalls,
                    "last_error": cam.stats.last_error},
            gradcam={"state": self.gradcam.state, "pid": self.gradcam.pid, **self.gradcam.counts}
            if self.gradcam else {"state": "disabled"}))

    def _discovery(self) -> list[tuple[str, bytes]]:
        return discovery_messages(self.cfg.homeassistant.prefix, self.link.base, self.cfg.device.id, _version(),
                                  self.classifier.name)

    def _publish_alert(self, alert: Alert, ts: str) -> None:
        payload = topics.envelope(self.cfg.device.id, ts=ts, kind=alert.kind, frame_id=alert.frame_id,
                                  dedup_key=alert.dedup_key, **alert.detail)
        self.link.publish(topics.ALERT, topics.dumps(payload), qos=1, kind="alert")
        self.history.event("alert", kind=alert.kind, frame_id=alert.frame_id)

    def on_result(self, r: Result) -> None:
        t0 = time.perf_counter()
        p, clf = r.prediction, self.classifier
        ts = topics.iso(r.frame.captured_at)
        payload = topics.envelope(
            self.cfg.device.id, ts=ts, frame_id=r.frame_id, label=p.label, defective=p.defective,
            p_defect=round(p.p_defect, 6), confidence=round(p.confidence, 6), threshold=p.threshold,
            low_confidence=p.low_confidence,
            model={"name": p.model, "quantization": clf.manifest.quantization, "sha256": p.sha256},
            timings_ms={k: round(v, 3) for k, v in r.timings_ms.items()})
        self.link.publish(topics.RESULT, topics.dumps(payload), qos=self.cfg.mqtt.result_qos, kind="result")
        self.ring.add(Buffered(r.frame_id, r.frame.image, self.camera.frame_order, p, r.frame.captured_at))
        for alert in self.alerts.on_result(r.frame_id, p):
            self._publish_alert(alert, ts)
            if self.cfg.alerts.snapshot:
                image = jpeg(r.frame.image, self.camera.frame_order, self.cfg.alerts.snapshot_jpeg_quality)
                self.link.publish(f"{topics.SNAPSHOT}/{r.frame_id}", image, qos=1, kind="image")
            if self.gradcam and alert.kind in self.cfg.gradcam.auto_on:
                self.gradcam.request(r.frame_id, r.frame.image, self.camera.frame_order, self.cfg.gradcam.method,
                                     {"p_defect_tflite": p.p_defect, "auto": alert.kind})
        self.history.add_result(r.frame_id, r.frame.captured_at, p.label, p.p_defect, p.confidence,
                                p.low_confidence, p.model, r.timings_ms)
        self._published_results += 1
        self.latency.add({**r.timings_ms, "publish": (time.perf_counter() - t0) * 1e3})

    # -- commands (paho's network thread) --------------------------------------------------------------------
    def _reply(self, topic: str, payload: bytes, props: Properties | None) -> None:
        if props is None:
            self.link.publish(topic.removeprefix(self.link.base + "/"), payload, qos=1, kind="reply")
        else:
            self.link.publish_direct(topic, payload, properties=props)

    def cmd_model(self, args: ModelArgs) -> dict[str, Any]:
        with self._swap_lock:
            try:
                new = self._load_classifier(args.name)
            except USER_ERRORS as e:
                raise CommandError(f"model {args.name!r} not loaded, keeping {self.classifier.name}: {e}") from None
            old = self.pipeline.classifier
            self.pipeline.classifier = new  # one reference swap: the next frame uses the new model
        self.history.event("model", old=old.name, new=new.name, sha256=new.manifest.tflite.sha256)
        self.link.publish(topics.STATUS, self.status_payload(), qos=1, kind="event", retain=True)
        return {"model": new.name, "quantization": new.manifest.quantization, "sha256": new.manifest.tflite.sha256,
                "previous": old.name}

    def cmd_threshold(self, args: ThresholdArgs) -> dict[str, Any]:
        with self._swap_lock:
            clf = self.classifier
            update = {k: v for k, v in (("threshold", args.threshold),
                                        ("low_confidence_band", args.low_confidence_band)) if v is not None}
            clf.decision = clf.decision.model_copy(update=update)
        self.history.event("threshold", **update)
        self.link.publish(topics.STATUS, self.status_payload(), qos=1, kind="event", retain=True)
        return {"threshold": clf.decision.threshold, "low_confidence_band": list(clf.decision.low_confidence_band)}

    def cmd_trigger(self, args: TriggerArgs) -> dict[str, Any]:
        if self.pipeline.mode != "on_demand":
            raise CommandError("this unit classifies continuously; set inference.mode = \"on_demand\" to use trigger")
        self.pipeline.trigger()
        return {"triggered": True}

    def cmd_feedback(self, args: FeedbackArgs) -> dict[str, Any]:
        item = self.ring.get(args.frame_id)
        if item is None:
            raise CommandError(f"frame {args.frame_id[:80]!r} is unknown or no longer buffered "
                               f"(the unit keeps its last {self.cfg.state.ring_frames} frames)")
        row = self.history.add_feedback(frame_id=item.frame_id, predicted=item.prediction.label,
                                        p_defect=item.prediction.p_defect, true_label=args.label, note=args.note,
                                        model=item.prediction.model, jpeg=jpeg(item.image, item.frame_order, 95))
        return {"feedback_id": row, "frame_id": item.frame_id, "correct": item.prediction.label == args.label}

    def cmd_gradcam(self, args: GradcamArgs) -> dict[str, Any]:
        if self.gradcam is None:
            raise CommandError("Grad-CAM is disabled on this unit (gradcam.enabled = false)")
        item = self.ring.get(args.frame_id)
        if item is None:
            raise CommandError(f"frame {args.frame_id[:80]!r} is unknown or no longer buffered "
                               f"(the unit keeps its last {self.cfg.state.ring_frames} frames)")
        if not self.gradcam.request(item.frame_id, item.image, item.frame_order, args.method,
                                    {"p_defect_tflite": item.prediction.p_defect, "request_id": args.request_id}):
            raise CommandError("too many Grad-CAM requests waiting; try again shortly")
        return {"queued": True, "frame_id": item.frame_id, "method": args.method,
                "result_topics": [f"{topics.GRADCAM}/{item.frame_id}", topics.GRADCAM]}

    def _gradcam_done(self, o: Outcome) -> None:
        """The worker's answer: the overlay on gradcam/<frame_id>, and a JSON event on gradcam either way."""
        if o.ok:
            self.link.publish(f"{topics.GRADCAM}/{o.frame_id}", o.jpeg, qos=1, kind="image")
            self.history.add_heatmap(o.frame_id, o.method, o.jpeg)
        event = topics.envelope(self.cfg.device.id, frame_id=o.frame_id, method=o.method, ok=o.ok,
                                layer=self.classifier.manifest.gradcam.layer, model=self.classifier.name,
                                p_defect_keras=None if o.p_defect_keras is None else round(o.p_defect_keras, 6),
                                p_defect_tflite=round(o.context["p_defect_tflite"], 6),
                                timings_ms={k: round(v, 3) for k, v in o.timings_ms.items()},
                                request_id=o.context.get("request_id"), auto=o.context.get("auto"),
                                **({} if o.ok else {"error": o.error}))
        self.link.publish(topics.GRADCAM, topics.dumps(event), qos=1, kind="event")

    # -- housekeeping ----------------------------------------------------------------------------------------
    def _metrics(self) -> None:
        now = time.monotonic()
        frames, stages = self.latency.take()
        elapsed, self._last_metrics = now - self._last_metrics, now
        depth, nbytes = self.outbox.depth()
        cam, link = self.camera.stats, self.link.stats
        payload = topics.envelope(
            self.cfg.device.id, interval_s=round(elapsed, 3), fps=round(frames / elapsed, 3) if elapsed else 0.0,
            frames=frames, dropped_frames=self.pipeline.dropped, frame_errors=self.pipeline.stats.frame_errors,
            latency_ms=stages, cpu_temp_c=cpu_temperature_c(), load=load_average(), rss_mb=rss_mb(),
            outbox={"depth": depth, "bytes": nbytes, "shed": self.outbox.shed_counts()},
            mqtt={"reconnects": link.reconnects, "dropped_qos0": link.dropped_qos0},
            camera={"state": self.camera.state, "reconnects": cam.reconnects, "stalls": cam.stalls},
            alerts_suppressed=self.alerts.suppressed, uptime_s=round(time.time() - self.started_at, 1))
        self.link.publish(topics.METRICS, topics.dumps(payload), qos=0, kind="metrics")
        fps = payload["fps"]
        self.notifier.status(f"{fps:.1f} fps, model {self.classifier.name}, camera {self.camera.state}, "
                             f"broker {'connected' if self.link.connected else 'away'}, outbox {depth}")

    def _watch_camera(self) -> None:
        if self.camera.state != self._status_camera_state:  # the retained status must not show a stale camera
            self._status_camera_state = self.camera.state
            self.link.publish(topics.STATUS, self.status_payload(), qos=1, kind="event", retain=True)
        now = time.time()
        if self.camera.state == "streaming" or self.camera.state == "ended":
            self._offline_since, self._offline_alerted = None, False
            return
        self._offline_since = self._offline_since or now
        if not self._offline_alerted and now - self._offline_since >= self.cfg.camera.offline_alert_after_s:
            self._offline_alerted = True
            key = f"{self.cfg.device.id}:camera_offline:{int(self._offline_since)}"
            self._publish_alert(Alert("camera_offline", None, key, {"since": topics.iso(self._offline_since),
                                                                    "error": self.camera.stats.last_error}),
                                topics.utc_now())

    def _watch_frame_errors(self) -> None:
        errors = self.pipeline.stats.frame_errors
        if errors > self._frame_errors_seen:
            key = f"{self.cfg.device.id}:model_error:{int(time.time() // 60)}"  # at most one a minute
            self._publish_alert(Alert("model_error", None, key, {"frame_errors": errors - self._frame_errors_seen,
                                                                 "error": self.pipeline.stats.last_error}),
                                topics.utc_now())
            self._frame_errors_seen = errors

    def _housekeeping(self) -> None:
        interval = self.cfg.metrics.interval_s
        next_metrics = time.monotonic() + interval
        while not self.stop_event.wait(0.5):
            try:
                self._watch_camera()
                self._watch_frame_errors()
                if time.monotonic() >= next_metrics:
                    next_metrics += interval
                    self._metrics()
                    self.history.flush()
                    self.history.prune()
            except Exception:  # housekeeping must never die: log and carry on next tick
                log.exception("housekeeping failed")

    def _heartbeat(self) -> None:
        self.notifier.watchdog()
        if not self._ready and (self.camera.state == "streaming"
                                or time.time() - self.started_at > self.cfg.camera.stall_timeout_s):
            self._ready = True
            self.notifier.ready(f"model {self.classifier.name}, camera {self.camera.state}")

    # -- lifecycle -------------------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        if not self.stop_event.is_set():
            self.notifier.stopping()
            log.info("stopping")
        self.stop_event.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.history.event("start", version=_version(), model=self.classifier.name, source=self.cfg.camera.source)
        self.link.start()
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        log.info("running: device %s, model %s, camera %s", self.cfg.device.id, self.classifier.name,
                 self.camera.source.description)
        try:
            self.pipeline.run(self.stop_event, self.on_result, self._heartbeat)
            if self.camera.state == "ended":
                log.info("the replay ended")
        finally:
            self.request_stop()
            deadline = time.monotonic() + STOP_WITHIN_S
            housekeeping.join(timeout=1.0)
            if self.gradcam:
                self.gradcam.stop()
            self.history.event("stop", frames=self._published_results)
            self.history.close()
            self.link.stop(flush_s=max(0.5, deadline - time.monotonic() - 1.0))
            self.outbox.close()
        return 0


def run(config_path: Path) -> int:
    from edge import config as cfgmod

    cfg = cfgmod.load(config_path)
    return Daemon(cfg).run()

