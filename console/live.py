"""What the pages show as it happens: every unit's results, metrics, availability, status and alerts, to each browser
that watches, over server-sent events.

The live feed has its own MQTT subscription (plain, QoS 0, not shared), so every console instance sees the whole
fleet whichever instance stored a message; the store is the memory, this is the window. Each browser gets a bounded
queue: a browser that cannot keep up loses its oldest events (it is told the count), never slows the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from console.config import ConsoleConfig
from contract import mqtt as mqttc
from contract import payloads, topics
from contract.payloads import PayloadError
from contract.topics import TopicError

log = logging.getLogger(__name__)

LIVE = ("available", "status", "result", "part", "alert", "metrics", "cmd/+/reply")


def summary(what: str, device_id: str, payload: bytes) -> dict[str, Any] | None:
    """The few fields a page shows of a message, validated by the contract; None for anything else."""
    if what == topics.AVAILABLE:
        return {"type": what, "device": device_id, "online": payload == topics.ONLINE}
    if what == topics.RESULT:
        r = payloads.read(payloads.Result, payload, device_id=device_id)
        return {"type": what, "device": device_id, "frame_id": r.frame_id, "label": r.label,
                "p_defect": r.p_defect, "confidence": r.confidence, "low_confidence": r.low_confidence,
                "ts": topics.epoch(r.ts), "model": r.model.name}
    if what == topics.PART:
        p = payloads.read(payloads.Part, payload, device_id=device_id)
        return {"type": what, "device": device_id, "part_id": p.part_id, "verdict": p.verdict,
                "p_defect": p.p_defect, "ts": topics.epoch(p.ts)}
    if what == topics.METRICS:
        m = payloads.read(payloads.Metrics, payload, device_id=device_id)
        return {"type": what, "device": device_id, "fps": m.fps,
                "p95_ms": m.latency_ms.get("inference", {}).get("p95"), "outbox": m.outbox.get("depth")}
    if what == topics.STATUS:
        s = payloads.read(payloads.Status, payload, device_id=device_id)
        return {"type": what, "device": device_id, "model": s.model.name, "quantization": s.model.quantization,
                "sha256": s.model.sha256[:12], "camera": s.camera.state}
    if what == topics.ALERT:
        a = payloads.read(payloads.Alert, payload, device_id=device_id)
        return {"type": what, "device": device_id, "kind": a.kind, "frame_id": a.frame_id,
                "dedup_key": a.dedup_key, "ts": topics.epoch(a.ts), "p_defect": a.p_defect}
    if what == topics.REPLY:
        r2 = payloads.read(payloads.Reply, payload, device_id=device_id)
        return {"type": what, "device": device_id, "request_id": r2.request_id, "ok": r2.ok}
    return None


@dataclass(eq=False)  # each watcher is itself: hashed by identity
class Watcher:
    device: str | None  # None: every unit
    kinds: frozenset[str]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=500))
    dropped: int = 0


class LiveHub:
    def __init__(self) -> None:
        self._watchers: set[Watcher] = set()
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None  # the web server's, set when it starts

    def watch(self, device: str | None, kinds: frozenset[str]) -> Watcher:
        w = Watcher(device, kinds)
        with self._lock:
            self._watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self._lock:
            self._watchers.discard(w)

    def wants(self, kind: str, device: str) -> bool:
        """Whether any browser watches this kind of message of this unit (else it is not even parsed)."""
        with self._lock:
            return any(kind in w.kinds and (w.device is None or w.device == device) for w in self._watchers)

    def publish(self, event: dict[str, Any]) -> None:
        """From any thread."""
        loop = self.loop
        if loop is None:
            return
        with self._lock:
            targets = [w for w in self._watchers
                       if event["type"] in w.kinds and (w.device is None or w.device == event["device"])]
        for w in targets:
            loop.call_soon_threadsafe(self._put, w, event)

    @staticmethod
    def _put(w: Watcher, event: dict[str, Any]) -> None:
        if w.queue.full():
            w.queue.get_nowait()
            w.dropped += 1
        w.queue.put_nowait(event)

    @staticmethod
    def sse(event: dict[str, Any]) -> str:
        return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


class LiveFeed:
    """The live subscription: summaries of what units say, into the hub."""

    def __init__(self, cfg: ConsoleConfig, hub: LiveHub):
        self.cfg, self.hub = cfg, hub
        m = cfg.mqtt
        self.outage = mqttc.OutageLog(log, m)
        self.client = mqttc.make_client(m, client_id=f"defect-console-{cfg.id}-live", password=cfg.mqtt_password())
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *_: self.outage.cannot_connect()
        self.client.on_message = self._on_message

    def start(self) -> None:
        mqttc.connect_async(self.client, self.cfg.mqtt)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _ud: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            self.outage.refused(rc)
            return
        self.outage.connected()
        for t in LIVE:
            client.subscribe(f"{self.cfg.mqtt.edge_prefix}/+/{t}", qos=0)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            where = topics.parse(self.cfg.mqtt.edge_prefix, msg.topic)
            if not self.hub.wants(where.what, where.device_id):
                return
            event = summary(where.what, where.device_id, bytes(msg.payload))
        except (PayloadError, TopicError):
            return  # the historian counts refusals; the live view just does not show them
        if event is not None:
            self.hub.publish(event)
