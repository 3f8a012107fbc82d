"""``defect-relay run``: alerts from the fleet to e-mail and every channel Apprise speaks, beside the central broker
(``docs/relay.md``).

Threads: paho's network thread (validates and stores each message, then acknowledges it: manual ack, so an alert
the relay could not store is redelivered by the broker), the scheduler (routing, evidence, storms, escalation), and
the sender (SMTP and Apprise with retries and dead letters). Subscriptions are MQTT v5 shared subscriptions, so
relays in one group split the fleet and each alert is handled by one of them; they are renewed on every connect. The
session is persistent: alerts and reviews published while the relay restarts wait for it at the broker.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contract import mqtt as mqttc
from contract import payloads, topics
from relay import mailer, notify
from relay.config import RelayConfig
from relay.intake import Rejected, check_image, parse_alert, parse_reviewed, route_topic
from relay.queue import Outgoing, Store
from relay.render import Renderer
from relay.storm import Scheduler

log = logging.getLogger(__name__)


class Relay:
    def __init__(self, cfg: RelayConfig):
        self.cfg = cfg
        renderer = Renderer(cfg)
        renderer.check()  # a broken template stops the start, named, rather than the first alert
        self.store = Store(cfg.state.dir / "relay.db")
        self.scheduler = Scheduler(cfg, self.store, renderer)
        self.stop_event = threading.Event()
        self._wake_sender = threading.Event()
        self.base = f"{cfg.status_prefix}/{cfg.id}"
        m = cfg.mqtt
        self.v5 = m.protocol == "5"
        self.outage = mqttc.OutageLog(log, m)
        self.client = mqttc.make_client(m, client_id=f"defect-relay-{cfg.id}", password=cfg.secret("mqtt"),
                                        will=(f"{self.base}/{topics.AVAILABLE}", topics.OFFLINE), manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *_: self.outage.cannot_connect()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.started = time.time()

    def subscriptions(self) -> list[str]:
        p = self.cfg.mqtt.edge_prefix
        plain = [f"{p}/+/{topics.ALERT}", f"{p}/+/{topics.SNAPSHOT}/+", f"{p}/+/{topics.FRAME}/+",
                 f"{p}/+/{topics.GRADCAM}/+", f"{self.cfg.mqtt.console_prefix}/+/{topics.REVIEWED}"]
        return [f"$share/{self.cfg.mqtt.shared_group}/{t}" for t in plain] if self.v5 else plain

    # -- intake (paho's network thread) --------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            self.outage.refused(rc)
            return
        self.outage.connected()
        for t in self.subscriptions():
            client.subscribe(t, qos=1)
        client.publish(f"{self.base}/{topics.AVAILABLE}", topics.ONLINE, qos=1, retain=True)
        self.publish_status()
        log.info("relay connected to %s:%d, subscribed to %s", self.cfg.mqtt.host, self.cfg.mqtt.port,
                 ", ".join(self.subscriptions()))

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if not self.stop_event.is_set():
            self.outage.lost(rc)

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.intake(msg.topic, bytes(msg.payload))
        except Rejected as e:
            self.store.count(f"rejected_{e.reason}")
            log.warning("rejected message on %s: %s", msg.topic[:120], e)
        except Exception:  # could not store it: do not acknowledge, so the broker delivers it again
            log.exception("could not store message on %s; it will be redelivered", msg.topic[:120])
            return
        client.ack(msg.mid, msg.qos)

    def intake(self, topic: str, payload: bytes) -> None:
        if topic.startswith(self.cfg.mqtt.console_prefix + "/"):
            r = parse_reviewed(self.cfg.mqtt.console_prefix, topic, payload)
            self.store.add_review(r.unit, r.frame_id, r.verdict, r.by)
            self.store.count("reviews_heard")
            return
        where = route_topic(self.cfg.mqtt.edge_prefix, topic)
        if where.what == "alert":
            alert = parse_alert(where.device_id, payload, self.cfg.limits.max_alert_bytes)
            self.store.accept_alert(alert.dedup_key, where.device_id, alert.kind, alert.frame_id,
                                    payloads.dumps(alert).decode())
            return
        check_image(where, payload, self.cfg.limits.max_image_bytes)
        assert where.key is not None
        # The snapshot (what the model saw), the whole frame with its crop's box (part modes), the heatmap.
        kind = "gradcam" if where.what == "gradcam_image" else where.what
        self.store.add_evidence(where.key, kind, payload)

    # -- delivery ------------------------------------------------------------------------------------------------
    def deliver(self, item: Outgoing) -> None:
        d = self.cfg.delivery
        try:
            if item.channel == "smtp":
                mailer.send(self.cfg, item.target.split(","), item.body, self.cfg.secret("smtp"))
            else:
                notify.send(item.target, item.body)
        except mailer.PermanentError as e:
            self.store.failed(item, str(e), retry_in=None)
            log.error("%s %d dead-lettered: %s", item.channel, item.id, e)
            self.publish_status()
            return
        except mailer.TransientError as e:
            too_old = time.time() - item.created > d.max_age_s
            if item.attempts + 1 >= d.max_attempts or too_old:
                self.store.failed(item, str(e), retry_in=None)
                log.error("%s %d dead-lettered after %d attempts: %s", item.channel, item.id, item.attempts + 1, e)
                self.publish_status()
            else:
                delay = min(d.backoff_max_s, d.backoff_initial_s * 2 ** item.attempts)
                self.store.failed(item, str(e), retry_in=delay)
                log.warning("%s %d failed (%s); retry in %.0f s", item.channel, item.id, e, delay)
            return
        self.store.delivered(item.id)

    def _scheduler_loop(self) -> None:
        while not self.stop_event.wait(0.25):
            try:
                self.scheduler.tick()
                self._wake_sender.set()
            except Exception:
                log.exception("scheduler failed; retrying")

    def _sender_loop(self) -> None:
        while not self.stop_event.is_set():
            self._wake_sender.wait(1.0)
            self._wake_sender.clear()
            try:
                for item in self.store.due():
                    if self.stop_event.is_set():
                        break
                    self.deliver(item)
            except Exception:
                log.exception("sender failed; retrying")

    # -- own topics ----------------------------------------------------------------------------------------------
    def status_payload(self) -> payloads.RelayStatus:
        return payloads.RelayStatus(
            device_id=self.cfg.id, started_at=topics.iso(self.started), uptime_s=round(time.time() - self.started, 1),
            counters=self.store.counters(), outgoing=self.store.outgoing_counts(),
            dead_letters=self.store.dead_letters(),
            mqtt=payloads.RelayLink(reconnects=self.outage.reconnects, last_error=self.outage.last_error))

    def _status_json(self) -> bytes:
        return payloads.dumps(self.status_payload())

    def publish_status(self) -> None:
        self.client.publish(f"{self.base}/{topics.STATUS}", self._status_json(), qos=1, retain=True)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        mqttc.connect_async(self.client, self.cfg.mqtt, persistent=True)
        threads = [threading.Thread(target=f, name=n, daemon=True)
                   for f, n in ((self._scheduler_loop, "scheduler"), (self._sender_loop, "sender"))]
        for t in threads:
            t.start()
        next_metrics = time.monotonic() + self.cfg.metrics_interval_s
        while not self.stop_event.wait(0.5):
            if time.monotonic() >= next_metrics:
                next_metrics += self.cfg.metrics_interval_s
                self.client.publish(f"{self.base}/{topics.METRICS}", self._status_json(), qos=0)
                self.store.prune_evidence(older_than_s=3600)
        for t in threads:
            t.join(timeout=5)
        self.client.publish(f"{self.base}/{topics.AVAILABLE}", topics.OFFLINE, qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()
        return 0
