"""``defect-edge run``: the unit's main process, beside the conveyor for months (``docs/architecture.md``).

This module keeps the wiring and the lifecycle; what the unit does when commanded is in :mod:`edge.control`, how it
watches itself in :mod:`edge.health`, and every message it sends is a model of :mod:`contract.payloads`.

Threads: the inference loop (main thread, pings the systemd watchdog, makes each part's verdict durable and then
hands it to the line's I/O), the capture thread (inside the pipeline), the publisher (results' and verdicts'
messages, alerts, history: every :data:`PUBLISH_EVERY_S` a batch, or at once for a verdict), the MQTT link's
thread (paho's network loop, commands, the outbox), and a housekeeping thread (metrics, history flush and pruning,
camera offline alerts, systemd STATUS). Nothing the broker or the camera does can end it; SIGTERM stops it within
5 s, after flushing what it can and publishing ``available=offline``. A crash loses no verdict the line was given:
the outbox keeps each part from its number to its published message, and the next start publishes what it finds
(``docs/line.md``).
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from paho.mqtt.properties import Properties

from contract import payloads, topics
from core import manifest as mf
from core.classifier import Classifier, Prediction
from core.framing import Figures, FramingWatch, figures
from core.images import ImageError, boxed, encode_jpeg
from core.models import manifest_path
from core.preprocess import FrameError
from core.signature import Familiarity, score_all
from core.verify import VerificationError, recorded_parity_problem, verify
from edge import messages
from edge.alerts import Alert, AlertPolicy, Sampler, Streak
from edge.config import EdgeConfig
from edge.control import Control
from edge.gradcam.service import GradcamService, Outcome
from edge.health import Health, Watched
from edge.history import History
from edge.io import LineInterface, LineState, line_interfaces
from edge.metrics import StageLatency, name_os_threads
from edge.mqtt.client import MqttLink
from edge.mqtt.commands import CommandRouter
from edge.mqtt.homeassistant import discovery_messages
from edge.mqtt.outbox import Outbox
from edge.parts import Part, PartIds, PartSettings, PartVerdict, deciding_frame, missed
from edge.pipeline import Pipeline, Result
from edge.policy import DecisionPolicy
from edge.ringbuffer import Buffered, FrameRing
from edge.rollout import Rollout, Watch
from edge.shadow import Offered
from edge.sources import Camera
from edge.systemd import Notifier
from edge.variants import Timed, load_table
from edge.variants import choose as choose_variant

if TYPE_CHECKING:
    from edge.releases import Releases

log = logging.getLogger(__name__)

STOP_WITHIN_S = 5.0
# The publisher's beat. Handled one by one on the inference loop, right after invoke() had flushed the CPU's caches, a
# result's messages cost 0.38 ms (0.45 at QoS 1), eight times what the same code takes warm; a batch runs warm. QoS 0
# results already wait up to 50 ms for the link's batch, so a result reaches the broker at most 100 ms later.
PUBLISH_EVERY_S = 0.05
# Results waiting for the publisher beyond which the inference loop publishes them itself. Each holds its frame as
# the ring will: a camera's pixels (270 kB at 300x300, 6 MB at 1080p), a replayed file's bytes (a twentieth). A batch
# is 2-7 frames at 30-130 fps, and a publisher starved for longer costs the loop its time rather than the unit its
# memory.
PUBLISH_BACKLOG = 32
# A configured line interface cannot start: the exit status systemd does not restart on (RestartPreventExitStatus).
EXIT_LINE_UNAVAILABLE = 2


def _releases(cfg: EdgeConfig, state: Path) -> Releases:
    """The unit's release client, imported only when ``releases.url`` is set: TUF and its cryptography add 10 MB to
    the daemon's peak memory (bench.mqtt's daemon_rss_mb went from 98 to 110 MB)."""
    from edge.mqttfetch import transport_for
    from edge.releases import Releases

    r = cfg.releases
    return Releases(r.url, r.root_file, state / "releases", keep=r.keep, transport=transport_for(r.url, cfg))


def _version() -> str:
    try:
        return metadata.version("defect-inspection")
    except metadata.PackageNotFoundError:
        return "unknown"


class Daemon:
    def __init__(self, cfg: EdgeConfig):
        self.cfg = cfg
        for warning in cfg.warnings():
            log.warning("%s", warning)
        self.started_at = time.time()
        self.instance_id = uuid.uuid4().hex[:12]
        self._variants: tuple[str, list[dict[str, Any]] | None] = ("", None)  # (sha256, its variants table)
        self.stop_event = threading.Event()
        self.notifier = Notifier()
        state = cfg.state.dir
        state.mkdir(parents=True, exist_ok=True)
        db = state / "state.db"
        self.outbox = Outbox(db, max_bytes=int(cfg.state.outbox_max_mb * 1024 * 1024))
        self.history = History(db, retention_days=cfg.state.results_retention_days,
                               max_rows=cfg.state.results_max_rows)
        self.policy = DecisionPolicy(state / "decision.json", threshold=cfg.model.threshold,
                                     low_confidence_band=cfg.model.low_confidence_band)
        self.camera = Camera(cfg.camera.frame_source(), stall_timeout=cfg.camera.stall_timeout_s)
        part_ids = PartIds(cfg.device.id, last_seq=self.outbox.last_part_seq(), opened=self._opened)
        self.pipeline = Pipeline(self.camera, self.load_classifier(cfg.model.name), device_id=cfg.device.id,
                                 mode=cfg.inference.mode, target_fps=cfg.inference.target_fps,
                                 queue_size=cfg.inference.queue_size, drop_when_behind=self.camera.source.live,
                                 parts=PartSettings.from_config(cfg.parts, cfg.camera.region(), state),
                                 part_ids=part_ids)
        self.line_state = LineState()
        self.line_state.pending = lambda: self.pipeline.triggers.pending
        self.line_state.duplicates = lambda: sum(self.pipeline.triggers.duplicates.values())
        self.line: list[LineInterface] = line_interfaces(cfg.line, self.line_state)
        self.ring = FrameRing(max_frames=cfg.state.ring_frames, max_bytes=int(cfg.state.ring_max_mb * 1024 * 1024))
        a = cfg.alerts
        self.alerts = AlertPolicy(cfg.device.id, on_defect=a.on_defect, on_low_confidence=a.on_low_confidence,
                                  rearm_after_good_frames=a.rearm_after_good_frames, repeat_after_s=a.repeat_after_s)
        self.sampler = Sampler(a.sample_share, a.sample_per_minute)
        self.latency = StageLatency()
        g = cfg.gradcam
        self.gradcam = GradcamService(lambda: self.classifier.manifest_path, self._gradcam_done,
                                      roi=cfg.camera.region(),
                                      threads=g.threads, nice=g.nice, idle_timeout_s=g.idle_timeout_s,
                                      request_timeout_s=g.request_timeout_s, alpha=g.alpha,
                                      jpeg_quality=g.jpeg_quality, layers=tuple(g.layers),
                                      duty_cycle=g.duty_cycle) if g.enabled else None
        r = cfg.releases
        self.rollout = Rollout(
            _releases(cfg, state) if r.url else None, cfg.model.models_dir,
            load=self.load_manifest, swap=lambda new: self.control.swap(new), share=r.shadow_share,
            watch=Watch(watch_results=r.watch_results, latency_factor=r.latency_factor,
                        ng_rate_delta=r.ng_rate_delta),
            changed=self.publish_status, event=self.history.event, on_disagree=self._disagreed,
            frame_errors=lambda: self.pipeline.stats.frame_errors, choose=self.measure_variants)
        self.control = Control(self.pipeline, ring=self.ring, history=self.history, policy=self.policy,
                               gradcam=self.gradcam, load=self.load_classifier, changed=self.publish_status,
                               rollout=self.rollout)
        self.router = CommandRouter(cfg.mqtt.prefix, cfg.device.id, self.control, self._reply)
        self.link = MqttLink(cfg, self.outbox, on_command=self.router.handle, status=self.status_payload,
                             discovery=self._discovery, instance=(self.instance_id, self.started_at))
        self.health = Health(Watched(cfg.device.id, self.started_at, self.camera, self.pipeline, self.latency,
                                     self.outbox, self.link, self.alerts, self.line_state, self.line),
                             offline_alert_after_s=cfg.camera.offline_alert_after_s, alert=self.publish_alert,
                             changed=self.publish_status)
        self.framing = FramingWatch(self.classifier.manifest.framing)
        self.unfamiliar = Streak(cfg.alerts.unfamiliar_streak)
        self._ready = False
        self._published_results = 0
        self._ref: tuple[Classifier, payloads.ModelRef] | None = None
        self._handed: deque[Callable[[], None]] = deque()  # from the inference loop to the publisher, in order
        self._unscored: deque[Familiarity] = deque()  # the handed results' familiarity, for one pass per batch
        self._publish_lock = threading.Lock()  # one thread publishes at a time, so messages keep that order
        self._published_all = threading.Event()  # the inference loop has ended: publish what is left, then stop
        self._publish_now = threading.Event()  # a verdict was handed: no waiting for the beat

    # -- model -----------------------------------------------------------------------------------------------
    def load_classifier(self, name: str) -> Classifier:
        return self.load_manifest(manifest_path(self.cfg.model.models_dir, name))

    def load_manifest(self, path: Path, threads: int | None = None) -> Classifier:
        """A model as this unit runs it (on ``threads``, default the configured), parity re-proven here first
        (from the models folder, or a fetched release's own folder before it is installed)."""
        m = self.cfg.model
        clf = Classifier(path, num_threads=threads or m.threads, delegate=m.delegate,
                         roi=self.cfg.camera.region(), frame_order=self.camera.frame_order)
        problem = recorded_parity_problem(clf.manifest, m.min_agreement)
        if problem:
            raise VerificationError(problem)
        report = verify(clf)  # parity on this unit's own runtime: a model that fails it is not loaded
        log.info("%s", report.line())
        if not report.ok:
            raise VerificationError(report.line())
        clf.decision = self.policy.decision(clf.manifest.decision)
        return clf

    def measure_variants(self, path: Path) -> list[Timed] | None:
        """A model's variants timed on this unit (edge/variants.py); None for a model converted with one."""
        m = self.cfg.model
        if not mf.load(path).variants:
            return None
        return choose_variant(path, num_threads=m.threads, memory_budget_mb=m.memory_budget_mb)

    @property
    def classifier(self) -> Classifier:
        return self.pipeline.classifier

    def _disagreed(self, seen: Offered, candidate: Prediction) -> None:
        """A frame the candidate in shadow calls otherwise than the active model: its snapshot goes to the console's
        review queue, so the reviewed truth of exactly these calls can judge the promotion. Handed to the publisher,
        after the frame's own result (which puts the frame in the ring)."""
        def send() -> None:
            buffered = self.ring.get(seen.frame_id)
            if buffered is not None:
                self._snapshot(buffered, seen.image, "sample")

        self._hand(send)

    # -- messages --------------------------------------------------------------------------------------------
    def status_payload(self) -> bytes:
        clf, cam = self.classifier, self.camera
        man = clf.manifest
        return payloads.dumps(payloads.Status(
            device_id=self.cfg.device.id, software_version=_version(), instance_id=self.instance_id,
            started_at=topics.iso(self.started_at),
            uptime_s=round(time.time() - self.started_at, 1), mode=self.cfg.inference.mode,
            model=payloads.StatusModel(
                name=man.name, quantization=man.quantization, sha256=man.tflite.sha256,
                architecture=man.architecture, runtime=clf.runtime.name, threads=clf.threads,
                threshold=clf.decision.threshold, low_confidence_band=clf.decision.low_confidence_band,
                variants=self._variants_table(man)),
            camera=payloads.CameraState(source=cam.source.description, state=cam.state, frames=cam.stats.frames,
                                        reconnects=cam.stats.reconnects, stalls=cam.stats.stalls,
                                        last_error=cam.stats.last_error),
            gradcam={"state": self.gradcam.state, "pid": self.gradcam.pid, **self.gradcam.counts}
            if self.gradcam else {"state": "disabled"}, model_refused=self.control.model_refused,
            framing=self.framing.status() if self.pipeline.judges_parts else None,
            familiarity=None if clf.ood_threshold is None else {
                "threshold": clf.ood_threshold, "unfamiliar": self.unfamiliar.unfamiliar,
                "streak": self.unfamiliar.length},
            decision=self.policy.sources(man.decision), parts=self._parts_status(), twin=self.link.twin,
            release=self.rollout.status()))

    def _variants_table(self, man: mf.Manifest) -> list[dict[str, Any]] | None:
        """The active model's variants as timed when it was installed, read once per model."""
        if self._variants[0] != man.tflite.sha256:
            self._variants = (man.tflite.sha256, load_table(self.cfg.model.models_dir, man.name, man.tflite.sha256))
        return self._variants[1]

    def _parts_status(self) -> dict[str, Any] | None:
        pipeline = self.pipeline
        if not pipeline.judges_parts:
            return None
        if pipeline.mode == "on_demand":
            t = pipeline.triggers
            return {"debounce_ms": round(t.debounce_s * 1e3, 1), "duplicates": dict(t.duplicates)}
        presence = pipeline.parts.presence
        return {"presence": presence.status() if presence else None}

    def publish_status(self) -> None:
        self.link.publish(topics.STATUS, self.status_payload(), qos=1, kind="event", retain=True)

    def _discovery(self) -> list[tuple[str, bytes]]:
        return discovery_messages(self.cfg.homeassistant.prefix, self.link.base, self.cfg.device.id, _version(),
                                  self.classifier.name)

    def _alert_json(self, alert: Alert, ts: str) -> bytes:
        return payloads.dumps(messages.alert(self.cfg.device.id, alert, ts))

    def publish_alert(self, alert: Alert, ts: str) -> None:
        self.link.publish(topics.ALERT, self._alert_json(alert, ts), qos=1, kind="alert")
        self.history.event("alert", kind=alert.kind, frame_id=alert.frame_id)

    def _model_ref(self) -> payloads.ModelRef:
        """The classifier now in use, as messages name it: built once per model, not once per frame."""
        clf = self.classifier
        if self._ref is None or self._ref[0] is not clf:
            m = clf.manifest
            self._ref = clf, payloads.ModelRef(name=m.name, quantization=m.quantization, sha256=m.tflite.sha256)
        return self._ref[1]

    def _alerted(self, alerts: list[Alert], ts: str, frame: Buffered) -> None:
        """Publish ``alerts`` about ``frame``, with their evidence."""
        for alert in alerts:
            self.publish_alert(alert, ts)
        self._evidence(alerts, frame)

    def _evidence(self, alerts: list[Alert], frame: Buffered) -> None:
        """The snapshot of the frame ``alerts`` are about and, as configured, a heatmap. The frame's pixels are
        decoded once, if needed (the ring may hold only the file's bytes)."""
        pixels = None
        for alert in alerts:
            gradcam = self.gradcam if alert.kind in self.cfg.gradcam.auto_on else None
            if not (self.cfg.alerts.snapshot or gradcam):
                continue
            pixels = frame.image if pixels is None else pixels
            if self.cfg.alerts.snapshot:
                self._snapshot(frame, pixels, "image")
            if gradcam:
                gradcam.request(frame.frame_id, pixels, frame.frame_order, self.cfg.gradcam.method,
                                {"p_defect_tflite": frame.prediction.p_defect, "auto": alert.kind})

    def _snapshot(self, frame: Buffered, pixels: np.ndarray, kind: str) -> None:
        """The snapshot is what the model saw: the part's crop when it was cropped, and then the whole frame with
        the crop's box drawn beside it, for the person who wants to see where on the belt it was."""
        quality = self.cfg.alerts.snapshot_jpeg_quality
        c = frame.crop
        shown = pixels if c is None else pixels[c.y:c.y + c.height, c.x:c.x + c.width]
        self.link.publish(f"{topics.SNAPSHOT}/{frame.frame_id}", encode_jpeg(shown, frame.frame_order, quality),
                          qos=1, kind=kind)
        if c is not None:
            whole = encode_jpeg(boxed(pixels, (c.x, c.y, c.width, c.height)), frame.frame_order, quality)
            self.link.publish(f"{topics.FRAME}/{frame.frame_id}", whole, qos=1, kind=kind)

    def _hand(self, job: Callable[[], None]) -> None:
        """Inference loop: leave ``job`` to the publisher; if it is that far behind, catch up first."""
        self._handed.append(job)
        if len(self._handed) >= PUBLISH_BACKLOG:
            self._publish_handed()

    def _publish_handed(self) -> None:
        with self._publish_lock:
            score_all(self._unscored.popleft() for _ in range(len(self._unscored)))
            while self._handed:
                job = self._handed.popleft()
                try:
                    job()
                except Exception:  # a message that cannot be built must not cost the ones after it
                    log.exception("publishing failed")

    def _publisher(self) -> None:
        while not self._published_all.is_set():
            self._publish_now.wait(PUBLISH_EVERY_S)
            self._publish_now.clear()
            self._publish_handed()
        self._publish_handed()

    def on_result(self, r: Result) -> None:
        """Inference loop: the result goes to the publisher's next batch, with its frame as the ring keeps it: a
        replayed file's bytes rather than its pixels (a batch at 460 fps held 6 MB of 300x300 pixels)."""
        buffered = Buffered.of(r.frame_id, r.frame, self.camera.frame_order, r.prediction, r.crop)
        if r.prediction.familiarity is not None:
            self._unscored.append(r.prediction.familiarity)
        self._hand(partial(self._publish_result, buffered, r.timings_ms, r.part_id, self._model_ref()))
        self.rollout.on_result(r.frame_id, r.frame.image, r.crop, r.prediction)

    def _publish_result(self, buffered: Buffered, timings_ms: dict[str, float], part_id: str | None,
                        model: payloads.ModelRef) -> None:
        t0 = time.perf_counter()
        p, frame_id = buffered.prediction, buffered.frame_id
        ts = topics.iso(buffered.captured_at)
        message = messages.result(self.cfg.device.id, ts=ts, frame_id=frame_id, p=p, timings_ms=timings_ms,
                                  part_id=part_id, model=model, crop=buffered.crop,
                                  ood_limit=self.classifier.ood_threshold)
        # Buffered before it is announced: a command naming the frame may arrive as soon as the result is out.
        self.ring.add(buffered)
        if part_id is None or self.cfg.parts.frame_results:
            self.link.publish(topics.RESULT, payloads.dumps(message), qos=self.cfg.mqtt.result_qos, kind="result")
        alerts = [] if self.pipeline.judges_parts else [*self.alerts.on_result(frame_id, p),
                                                         *self._unfamiliar(p.ood, frame_id, frame_id)]
        self._alerted(alerts, ts, buffered)
        if not alerts and not self.pipeline.judges_parts and self.sampler.take():  # for the console's review
            self._snapshot(buffered, buffered.image, "sample")
        self.history.add_result(frame_id, buffered.captured_at, p.label, p.p_defect, p.confidence,
                                p.low_confidence, p.model, message.timings_ms)
        self._published_results += 1
        self.latency.add({**timings_ms, "publish": (time.perf_counter() - t0) * 1e3})

    def _opened(self, part: Part) -> None:
        """Whichever thread numbers a part (a trigger's, or the inference loop for presence): the outbox keeps it
        until its message is stored, so a crash before its verdict is reported ``missed`` by the next start."""
        try:
            self.outbox.open_part(part.seq, part.part_id, part.source, part.opened_at)
        except sqlite3.Error as e:
            log.error("part %d not recorded (a crash now would not report it): %s", part.seq, e)

    def on_part(self, v: PartVerdict) -> None:
        """Inference loop: the verdict's messages are built and made durable, then the verdict goes to the line (a
        PLC is waiting), then the publisher is woken to store and send them, after the results of the part's
        frames. No wire ever shows a verdict that a crash could lose."""
        part_message, alerts = self._part_messages(v, self._model_ref())
        record = json.dumps({"part": payloads.dumps(part_message).decode(),
                             "alerts": [self._alert_json(a, part_message.ts).decode() for a in alerts]})
        try:
            self.outbox.decide_part(v.part.seq, v.part.part_id, v.part.source, v.part.opened_at, record)
        except sqlite3.Error as e:  # the line still gets its answer: a PLC waits, and the MQTT message follows
            log.error("part %d: verdict not made durable before the line was told: %s", v.part.seq, e)
        self.line_state.decided(v)
        for interface in self.line:
            try:
                interface.decided(v)
            except Exception as e:  # one interface's failure must not cost the others, or the verdict
                log.warning("%s: verdict not delivered: %s", interface.name, e)
        self._hand(partial(self._publish_part, v, part_message, alerts))
        self._publish_now.set()

    def _part_messages(self, v: PartVerdict, model: payloads.ModelRef) -> tuple[payloads.Part, list[Alert]]:
        """The ``part`` message of a verdict (but its framing figures, measured later on the publisher) and the
        alerts it raises."""
        part, p = v.part, v.prediction
        rule = self.cfg.parts.aggregate
        message = messages.part(self.cfg.device.id, v, rule=rule, model=model,
                                ood_limit=self.classifier.ood_threshold)
        decider = deciding_frame(part, rule) if part.frames else None
        alerts = [] if p is None or decider is None else [
            *self.alerts.on_part(part.part_id, decider.frame_id, p),
            *self._unfamiliar(decider.ood, decider.frame_id, part.part_id, part_id=part.part_id)]
        return message, alerts

    def _publish_part(self, v: PartVerdict, message: payloads.Part, alerts: list[Alert]) -> None:
        """Publisher: the part's message with its framing figures, and its alerts, stored in the transaction that
        settles the part; then the alerts' evidence, and the framing watch."""
        frame = self.ring.get(message.frame_id) if message.frame_id else None
        seen = self._figures(frame) if frame is not None else None
        if seen is not None:
            message = message.model_copy(update={"framing": seen.as_dict()})
        self.link.publish_many([(topics.PART, payloads.dumps(message), "part"),
                                *((topics.ALERT, self._alert_json(a, message.ts), "alert")
                                  for a in alerts)], settles=v.part.seq)
        self.history.event("part", part_id=v.part.part_id, verdict=v.verdict, p_defect=message.p_defect)
        for a in alerts:
            self.history.event("alert", kind=a.kind, frame_id=a.frame_id)
        if frame is not None:
            self._evidence(alerts, frame)
            if v.verdict == "ok" and not alerts and self.sampler.take():
                # A share of the OK parts, by their deciding frame: what the console's escape rate is measured on
                # (a share of frames would sample a part's other frames, and NG parts' too).
                self._snapshot(frame, frame.image, "sample")
            if seen is not None:
                self._watch_framing(seen, v.part.part_id, frame, message.ts)

    def _recover(self) -> None:
        """At start: the parts the last run had promised the line and not published. A decided one is published as
        it was decided; one still being inspected when the unit stopped is reported ``missed``, with why, and shown
        to the line as such."""
        for u in self.outbox.unsettled():
            if u.decided is not None:
                record = json.loads(u.decided)
                queued = [(topics.PART, record["part"].encode(), "part"),
                          *((topics.ALERT, a.encode(), "alert") for a in record["alerts"])]
                verdict = json.loads(record["part"]).get("verdict")
            else:
                part = Part(u.part_id, u.seq, u.source, time.perf_counter(), opened_at=u.opened)  # type: ignore[arg-type]
                v = missed(part, "the unit stopped while the part was being inspected; this is its restart")
                message, _ = self._part_messages(v, self._model_ref())
                queued, verdict = [(topics.PART, payloads.dumps(message), "part")], "missed"
                self.line_state.decided(v)
            self.link.publish_many(queued, settles=u.seq)
            self.history.event("part", part_id=u.part_id, verdict=verdict, recovered=True)
            log.warning("part %d (%s) from before the restart: published %s", u.seq, u.part_id, verdict)

    def _figures(self, frame: Buffered) -> Figures | None:
        """How the region the model saw of ``frame`` frames its part, by the locator that measured the training
        images: here on the publisher, once per part, not on the inference loop for every part frame."""
        try:
            region = self.classifier.preprocess.source(frame.image, frame.crop)
        except (FrameError, ImageError):
            return None
        return figures(region, pixel_threshold=self.cfg.parts.pixel_threshold)

    def _unfamiliar(self, ood: float | None, frame_id: str, key: str, **detail: str) -> list[Alert]:
        """A run of inputs unlike anything the model was trained on (an unknown part, an empty fixture, a hand):
        one ``unfamiliar_input`` alert, with the last of them attached."""
        limit = self.classifier.ood_threshold
        if ood is None or limit is None or not self.unfamiliar.add(ood > limit) or not self.cfg.alerts.on_unfamiliar:
            return []
        log.warning("%d inputs in a row unlike the model's training images (ood %.2f > %.2f)",
                    self.unfamiliar.length, ood, limit)
        return [Alert("unfamiliar_input", frame_id, f"{self.cfg.device.id}:unfamiliar_input:{key}",
                      {"ood": round(ood, 4), "ood_threshold": limit, "model": self.classifier.name, **detail})]

    def _watch_framing(self, seen: Figures, part_id: str, frame: Buffered, ts: str) -> None:
        """The part's framing against the model's training images; the moment the line's becomes unlike them, one
        ``framing`` alert with what differs and the crop the model saw."""
        spec = self.classifier.manifest.framing
        if self.framing.spec is not spec:  # another model: another record to compare with
            self.framing = FramingWatch(spec)
        problems = self.framing.add(seen)
        if problems:
            log.warning("framing unlike the model's training images: %s", "; ".join(problems))
            alert = Alert("framing", frame.frame_id, f"{self.cfg.device.id}:framing:{part_id}",
                          {"problems": problems, "model": self.classifier.name, "part_id": part_id})
            self._alerted([alert], ts, frame)
            self.publish_status()  # the retained status says it too, for whoever looks later

    def _reply(self, topic: str, payload: bytes, props: Properties | None) -> None:
        """A command's reply: through the outbox on the unit's own reply topic, directly to a v5 response topic."""
        if props is None:
            self.link.publish(topic.removeprefix(self.link.base + "/"), payload, qos=1, kind="reply")
        else:
            self.link.publish_direct(topic, payload, properties=props)

    def _gradcam_done(self, o: Outcome) -> None:
        """The worker's answer: the overlay on gradcam/<frame_id>, and a JSON event on gradcam either way."""
        if o.ok:
            self.link.publish(f"{topics.GRADCAM}/{o.frame_id}", o.jpeg, qos=1, kind="image")
            self.history.add_heatmap(o.frame_id, o.method, o.jpeg)
        event = payloads.GradcamEvent(
            device_id=self.cfg.device.id, frame_id=o.frame_id, method=o.method, ok=o.ok,
            layer=o.layer, model=self.classifier.name,
            p_defect_keras=None if o.p_defect_keras is None else round(o.p_defect_keras, 6),
            p_defect_tflite=round(o.context["p_defect_tflite"], 6),
            timings_ms={k: round(v, 3) for k, v in o.timings_ms.items()},
            request_id=o.context.get("request_id"), auto=o.context.get("auto"), error=None if o.ok else o.error)
        self.link.publish(topics.GRADCAM, payloads.dumps(event), qos=1, kind="event")

    # -- housekeeping ----------------------------------------------------------------------------------------
    def _metrics(self) -> None:
        message = self.health.metrics()
        self.link.publish(topics.METRICS, payloads.dumps(message), qos=0, kind="metrics")
        depth = message.outbox["depth"]
        self.notifier.status(f"{message.fps:.1f} fps, model {self.classifier.name}, camera {self.camera.state}, "
                             f"broker {'connected' if self.link.connected else 'away'}, outbox {depth}")

    def _housekeeping(self) -> None:
        interval = self.cfg.metrics.interval_s
        next_metrics = time.monotonic() + interval
        named = 0
        while not self.stop_event.wait(0.5):
            try:
                if named < threading.active_count() - 1:  # threads start later (the capture, a wire's): name them
                    named = name_os_threads()
                self.health.watch_camera()
                self.health.watch_frame_errors()
                self.rollout.check()
                if time.monotonic() >= next_metrics:
                    next_metrics += interval
                    self._metrics()
                    if self.rollout.shadow is not None:  # its figures grow: the retained status keeps up with them
                        self.publish_status()
                    self.history.flush()
                    self.history.prune()
            except Exception:  # housekeeping must never die: log and carry on next tick
                log.exception("housekeeping failed")

    def _heartbeat(self) -> None:
        self.notifier.watchdog()
        self.line_state.beat(self.camera.state == "streaming")
        if not self._ready and (self.camera.state == "streaming"
                                or time.time() - self.started_at > self.cfg.camera.stall_timeout_s):
            self._ready = True
            self.notifier.ready(f"model {self.classifier.name}, camera {self.camera.state}")

    def _start_line(self) -> bool:
        """Start each configured line interface. One that cannot start (its port taken, by another instance of
        this unit as like as not; a pin busy) is said in one line, and the unit does not run: a line that believes
        it is wired to an inspection station must not be left without it, silently. False then."""
        for i, interface in enumerate(self.line):
            try:
                interface.start(self.pipeline.trigger)
            except OSError as e:
                log.error("%s: not running without it (exit %d); is another unit already serving it?", e,
                          EXIT_LINE_UNAVAILABLE)
                self.history.event("line_error", interface=interface.name, error=str(e))
                del self.line[i:]  # the ones started are stopped on the way out
                return False
        return True

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
        self._recover()
        self.link.start()
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        publisher = threading.Thread(target=self._publisher, name="publisher", daemon=True)
        publisher.start()
        exit_code = 0
        if not self._start_line():
            exit_code = EXIT_LINE_UNAVAILABLE
            self.request_stop()
        else:
            log.info("running: device %s, model %s, camera %s", self.cfg.device.id, self.classifier.name,
                     self.camera.source.description)
        try:
            self.pipeline.run(self.stop_event, self.on_result, self._heartbeat, self.on_part)
            if self.camera.state == "ended":
                log.info("the replay ended")
        finally:
            self.request_stop()
            deadline = time.monotonic() + STOP_WITHIN_S
            self._published_all.set()
            self._publish_now.set()
            publisher.join(timeout=STOP_WITHIN_S / 2)  # everything classified is published, or in the outbox
            housekeeping.join(timeout=1.0)
            self.line_state.stopping()
            for interface in self.line:
                interface.stop()
            if self.gradcam:
                self.gradcam.stop()
            self.rollout.stop()
            self.history.event("stop", frames=self._published_results)
            self.history.close()
            self.link.stop(flush_s=max(0.5, deadline - time.monotonic() - 1.0))
            self.outbox.close()
        return exit_code


def run(config_path: Path) -> int:
    from edge import config as cfgmod

    cfg = cfgmod.load(config_path)
    return Daemon(cfg).run()
