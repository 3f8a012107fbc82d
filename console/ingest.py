"""The historian: every unit's messages into the store, through an MQTT v5 shared subscription and a persistent session.

Several console instances in one ``mqtt.shared_group`` split the fleet's messages; the broker keeps what was sent
while an instance was away (``mqtt.session_expiry_s``). Each message is checked against the contract (its topic
split by :func:`contract.topics.parse`, its payload read by :func:`contract.payloads.read`, images bounded and
checked for JPEG) before anything is stored: a malformed or hostile message is counted under its reason and dropped.

Acknowledgements are manual and in order: a message is acknowledged only after the transaction holding it committed,
so when the database is full, locked or away, the historian says so once (``state``, shown on the fleet page), retries
with backoff, and the broker keeps, and later redelivers, whatever was not acknowledged. Writes are batched:
``database.batch_max`` messages or ``database.batch_wait_ms``, whichever comes first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from console import images
from console.config import ConsoleConfig
from console.store import writer
from contract import mqtt as mqttc
from contract import payloads, topics
from contract.payloads import PayloadError
from contract.topics import TopicError

log = logging.getLogger(__name__)

# What the historian keeps of each unit (every topic but commands).
SUBSCRIBED = ("available", "status", "result", "part", "alert", "metrics", "snapshot/+", "frame/+", "gradcam",
              "gradcam/+", "cmd/+/reply")
TYPED: dict[str, type[payloads.Message]] = {"result": payloads.Result, "part": payloads.Part, "alert": payloads.Alert,
                                            "status": payloads.Status, "metrics": payloads.Metrics,
                                            "gradcam": payloads.GradcamEvent, "reply": payloads.Reply}


@dataclass(frozen=True)
class _Pending:
    mid: int
    qos: int
    item: writer.Item | None  # None: nothing to store (refused), only to acknowledge in order


def topic_filters(cfg: ConsoleConfig) -> list[str]:
    p, m = cfg.mqtt.edge_prefix, cfg.mqtt
    plain = [f"{p}/+/{t}" for t in SUBSCRIBED]
    return [f"$share/{m.shared_group}/{t}" for t in plain] if m.protocol == "5" else plain


class Historian:
    def __init__(self, cfg: ConsoleConfig, engine: Engine, *,
                 on_stored: Callable[[list[writer.Item]], None] = lambda _items: None):
        self.cfg = cfg
        self.engine = engine
        self.on_stored = on_stored  # after each commit: the live view's feed
        self.state = "starting"  # starting | ok | database_error: <reason>
        self.stats: Counter[str] = Counter()
        self._unsaved: Counter[str] = Counter()  # counters not yet written to the store
        self._queue: queue.Queue[_Pending] = queue.Queue(maxsize=50_000)
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        m = cfg.mqtt
        self.outage = mqttc.OutageLog(log, m)
        self.client = mqttc.make_client(m, client_id=f"defect-console-{cfg.id}", password=cfg.mqtt_password(),
                                        manual_ack=True, persistent=True)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *_: self.outage.cannot_connect()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="historian-writer", daemon=True)
        self._writer.start()
        mqttc.connect_async(self.client, self.cfg.mqtt, persistent=True,
                            session_expiry_s=self.cfg.mqtt.session_expiry_s)

    def stop(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._writer:
            self._writer.join(timeout=10)

    # -- MQTT (paho's network thread) --------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            self.outage.refused(rc)
            return
        self.outage.connected()
        if self.state == "starting":
            self.state = "ok"
        v5 = self.cfg.mqtt.protocol == "5"
        for t in topic_filters(self.cfg):
            # retain-as-published: a retained status or availability is stored with the time we heard it
            client.subscribe(t, options=SubscribeOptions(qos=1, retainAsPublished=True) if v5 else None,
                             qos=0 if v5 else 1)
        log.info("historian connected to %s:%d (session %s), subscribed to %s", self.cfg.mqtt.host,
                 self.cfg.mqtt.port, "resumed" if getattr(flags, "session_present", False) else "new",
                 ", ".join(topic_filters(self.cfg)))

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if not self._stop.is_set():
            self.outage.lost(rc)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            item = self.accept(msg.topic, bytes(msg.payload))
        except (PayloadError, TopicError) as e:
            self._unsaved[f"rejected_{e.reason}"] += 1
            self.stats[f"rejected_{e.reason}"] += 1
            log.debug("refused %s: %s", msg.topic[:120], e)
            item = None
        except Exception:  # a bug must not stop the network thread; the message is not acknowledged
            log.exception("could not take the message on %s", msg.topic[:120])
            return
        self._unsaved["received"] += 1
        self._queue.put(_Pending(msg.mid, msg.qos, item))  # blocks paho when the writer is far behind: flow control

    def accept(self, topic: str, payload: bytes) -> writer.Item:
        """Check one message against the contract; an image is written to disk (by content) here."""
        where = topics.parse(self.cfg.mqtt.edge_prefix, topic)
        now = time.time()
        lim = self.cfg.limits
        if where.what in (topics.SNAPSHOT, topics.FRAME, "gradcam_image"):
            if len(payload) > lim.max_image_bytes:
                raise PayloadError("oversize", f"{where.what} of {len(payload)} bytes > {lim.max_image_bytes}")
            if not payload.startswith(images.JPEG_MAGIC):
                raise PayloadError("not_jpeg", f"{where.what} for {where.key} is not a JPEG")
            sha = images.store(self.cfg.images_dir, payload)
            return writer.Item(where.what, where.device_id, now, key=where.key, sha256=sha, size=len(payload))
        if where.what == topics.AVAILABLE:
            if payload not in (topics.ONLINE, topics.OFFLINE):
                raise PayloadError("bad_field", "available must be online or offline")
            return writer.Item(where.what, where.device_id, now, online=payload == topics.ONLINE)
        message = payloads.read(TYPED[where.what], payload, device_id=where.device_id, max_bytes=lim.max_json_bytes)
        return writer.Item(where.what, where.device_id, now, message=message, raw=payload, key=where.key)

    # -- the writer thread -------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Pending]:
        db = self.cfg.database
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + db.batch_wait_ms / 1000
        while len(batch) < db.batch_max:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        backoff = 0.5
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take_batch()
            while batch:
                items = [p.item for p in batch if p.item is not None]
                try:
                    new = writer.write(self.engine, items) if items else {}
                    counts, self._unsaved = self._unsaved, Counter()
                    writer.count(self.engine, self.cfg.id, dict(counts + Counter(new)))
                except SQLAlchemyError as e:
                    reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
                    if self.state != f"database_error: {reason}":
                        log.error("the database refused a batch of %d messages (%s); retrying, nothing is "
                                  "acknowledged until it is stored", len(batch), reason)
                    self.state = f"database_error: {reason}"
                    if self._stop.wait(backoff):
                        return  # stopping: the broker redelivers what was not acknowledged
                    backoff = min(backoff * 2, 30.0)
                    continue
                if self.state != "ok":
                    if self.state.startswith("database_error"):
                        log.info("the database takes writes again")
                    self.state = "ok"
                backoff = 0.5
                self.stats.update(new)
                for p in batch:
                    if p.qos:
                        self.client.ack(p.mid, p.qos)
                self.on_stored(items)
                batch = []
