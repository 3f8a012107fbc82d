"""Releases over MQTT: the console answers units that reach nothing but the broker with pieces of its release
repository's files (``docs/releases.md``).

The repository is the one served read-only at ``/releases/``: public, since every file a unit takes is checked by its
TUF client against the root it trusts (signatures, versions, expiry, length and sha256). So this path only has to
deliver bytes, and to deliver nothing else: a request names a path under ``metadata/`` or ``targets/`` by the
contract's pattern, and the file must resolve inside the repository (a symlink out of it is not served). Each
answer is one piece of at most :data:`CHUNK` bytes, sent on the asking unit's own topic, which only it may read; the
unit asks for the next piece when it has this one, so a slow unit never fills the broker's queue.

Requests are answered by one thread from a bounded queue: a unit asking too fast finds its requests dropped (and
counted), and asks again when its wait times out.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from console.config import ConsoleConfig
from contract import mqtt as mqttc
from contract import payloads, topics
from contract.payloads import FilePart, FileRequest, PayloadError
from contract.topics import TopicError

log = logging.getLogger(__name__)

CHUNK = 128 * 1024  # a piece: well under the broker's default message limit, and a unit's memory
QUEUE = 64  # requests waiting to be answered, at most


def answer(root: Path, request: FileRequest) -> bytes:
    """The answer to ``request`` from the repository at ``root``."""
    path = (root / request.path).resolve()
    base = root.resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return payloads.file_part(FilePart(id=request.id, status=404, offset=request.offset, size=0), b"")
    size = path.stat().st_size
    if request.offset and request.offset >= size:
        return payloads.file_part(FilePart(id=request.id, status=416, offset=request.offset, size=size), b"")
    with path.open("rb") as f:
        f.seek(request.offset)
        data = f.read(CHUNK)
    return payloads.file_part(FilePart(id=request.id, status=206 if request.offset else 200, offset=request.offset,
                                       size=size), data)


class ReleaseFeed:
    """The console's answering side, on a connection of its own."""

    def __init__(self, cfg: ConsoleConfig, root: Path):
        self.cfg, self.root = cfg, root
        self.stats: Counter[str] = Counter()
        m = cfg.mqtt
        self.outage = mqttc.OutageLog(log, m)
        self.client = mqttc.make_client(m, client_id=f"defect-console-{cfg.id}-releases",
                                        password=cfg.mqtt_password())
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *_: self.outage.cannot_connect()
        self.client.on_message = self._on_message
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=QUEUE)
        self._worker = threading.Thread(target=self._work, name="release-feed", daemon=True)

    def start(self) -> None:
        self._worker.start()
        mqttc.connect_async(self.client, self.cfg.mqtt)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _on_connect(self, client: mqtt.Client, _ud: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            self.outage.refused(rc)
            return
        self.outage.connected()
        mqttc.no_delay(client)  # each piece at once, not after the last one's acknowledgement
        client.subscribe(f"{self.cfg.mqtt.edge_prefix}/+/{topics.RELEASE_GET}", qos=0)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put_nowait((msg.topic, bytes(msg.payload)))
        except queue.Full:
            self.stats["dropped_busy"] += 1

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._serve(*item)
            except Exception:  # one request must never end the feed
                log.exception("releases over MQTT: a request failed")

    def _serve(self, topic: str, payload: bytes) -> None:
        prefix = self.cfg.mqtt.edge_prefix
        device = topic.removeprefix(f"{prefix}/").removesuffix(f"/{topics.RELEASE_GET}")
        try:
            if not topics.DEVICE_ID.match(device):
                raise TopicError("bad_topic", f"{topic[:120]}: not a unit's topic")
            if len(payload) > 1000:
                raise PayloadError("oversize", f"a request of {len(payload)} bytes")
            request = FileRequest.model_validate_json(payload)
        except (TopicError, PayloadError, ValueError) as e:
            self.stats["refused"] += 1
            log.debug("releases over MQTT: refused %s: %s", topic[:120], str(e).splitlines()[0][:200])
            return
        self.stats["served"] += 1
        self.client.publish(topics.release_part(self.cfg.mqtt.console_prefix, device), answer(self.root, request),
                            qos=1)
