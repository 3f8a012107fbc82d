"""Releases through the broker, for a unit that reaches nothing else (``releases.url = "mqtt://defect-console"``,
the console's MQTT prefix; ``docs/releases.md``).

TUF makes the transport untrusted: every file the unit takes is checked against the root it trusts, whichever way it
came. So this is only a way to move bytes. The unit asks on its own topic (``<prefix>/<device>/release/get``) for a
file of the repository from an offset; the console (``console/releasefeed.py``) answers with one piece on a topic only
this unit may read (``<console prefix>/releases/<device>/part``); the unit asks for the next piece when it has this
one. A download cut off resumes from the partial file as over HTTP (:class:`edge.releases.ResumingFetcher`), and an
answer that does not come within the timeout is a failed download, said in one line.

It uses a connection of its own (client id ``defect-edge-<device>-releases``, the unit's user and password), opened
when a release is fetched and closed after, so the results' connection never waits behind a model's bytes.
"""

from __future__ import annotations

import queue
import re
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from tuf.api import exceptions as tuf_errors

from contract import mqtt as mqttc
from contract import payloads, topics
from contract.payloads import FilePart, FileRequest, PayloadError
from contract.settings import BrokerSettings
from edge.config import EdgeConfig

SCHEME = "mqtt://"
_URL = re.compile(r"^mqtt://(?P<prefix>[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*?)/(?P<path>(metadata|targets)/.+)$")


class MqttAnswer:
    """One file from an offset, piece by piece as the console sends them (an :class:`edge.releases.Answer`)."""

    def __init__(self, transport: MqttTransport, path: str, head: FilePart, data: bytes):
        self.transport, self.path, self.head, self.data = transport, path, head, data

    @property
    def status(self) -> int:
        return self.head.status

    def stream(self, amt: int) -> Iterator[bytes]:
        del amt  # the console's pieces are the chunks
        head, data = self.head, self.data
        offset = head.offset
        while head.status in (200, 206) and data:
            yield data
            offset += len(data)
            if offset >= head.size:
                return
            head, data = self.transport.ask(self.path, offset)
            if head.status not in (200, 206) or head.offset != offset:
                raise tuf_errors.DownloadError(f"{self.path}: the console answered {head.status} at {head.offset} "
                                               f"for the piece at {offset}")
        if head.status in (200, 206) and offset < head.size:
            raise tuf_errors.DownloadError(f"{self.path}: an empty piece at {offset} of {head.size}")

    def close(self) -> None:
        """Nothing to close: each piece is its own message."""

    def release_conn(self) -> None:
        """Nothing to release."""

    def drain_conn(self) -> None:
        """Nothing to drain."""


class MqttTransport:
    """Asks the console for release files over the broker (an :class:`edge.releases.Transport`)."""

    def __init__(self, settings: BrokerSettings, *, device_id: str, password: str, prefix: str,
                 timeout_s: float = 30.0):
        self.settings, self.device_id, self.password = settings, device_id, password
        self.request_topic = f"{topics.base(prefix, device_id)}/{topics.RELEASE_GET}"
        self.timeout_s = timeout_s
        self._client: mqtt.Client | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[str, queue.Queue[bytes]] = {}
        self._answers = ""  # the topic the console answers on, from the URL

    def _connect(self, console_prefix: str) -> mqtt.Client:
        with self._lock:
            if self._client is not None and self._answers == console_prefix:
                client = self._client
            else:
                self.close()
                self._answers = console_prefix
                self._ready.clear()
                client = mqttc.make_client(self.settings, client_id=f"defect-edge-{self.device_id}-releases",
                                           password=self.password)
                client.on_connect = self._on_connect
                client.on_subscribe = lambda *_: self._ready.set()
                client.on_message = self._on_message
                mqttc.connect_async(client, self.settings)
                self._client = client
        if not self._ready.wait(self.timeout_s):
            raise tuf_errors.DownloadError(f"broker {self.settings.host}:{self.settings.port}: not connected and "
                                           f"subscribed within {self.timeout_s:g} s")
        return client

    def _on_connect(self, client: mqtt.Client, _ud: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        if not rc.is_failure:
            mqttc.no_delay(client)  # a request after a piece's acknowledgement: not held back 40 ms by Nagle
            client.subscribe(topics.release_part(self._answers, self.device_id), qos=1)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            head, _ = payloads.read_file_part(bytes(msg.payload))
        except PayloadError:
            return  # not an answer: nobody waits for it
        waiting = self._waiting.get(head.id)
        if waiting is not None:
            waiting.put(bytes(msg.payload))

    def ask(self, path: str, offset: int) -> tuple[FilePart, bytes]:
        """One piece of ``path`` from ``offset``, as the console answered."""
        client = self._connect(self._answers)
        rid = secrets.token_hex(8)
        answer: queue.Queue[bytes] = queue.Queue()
        self._waiting[rid] = answer
        try:
            client.publish(self.request_topic, FileRequest(id=rid, path=path, offset=offset).model_dump_json().encode(),
                           qos=1)
            try:
                return payloads.read_file_part(answer.get(timeout=self.timeout_s))
            except queue.Empty:
                raise tuf_errors.SlowRetrievalError(f"{path}: no answer from the console over MQTT within "
                                                    f"{self.timeout_s:g} s") from None
        finally:
            del self._waiting[rid]

    def get(self, url: str, start: int) -> MqttAnswer:
        where = _URL.match(url)
        if where is None:
            raise tuf_errors.DownloadError(f"{url}: not an {SCHEME}<console prefix>/metadata|targets/... URL")
        console_prefix, path = where["prefix"], where["path"]
        self._connect(console_prefix)
        head, data = self.ask(path, start)
        return MqttAnswer(self, path, head, data)

    def close(self) -> None:
        """Disconnect (a release fetched, or failed): the next fetch connects again."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


def transport_for(url: str, cfg: EdgeConfig, *, timeout_s: float = 30.0) -> MqttTransport | None:
    """The broker transport for an ``mqtt://`` repository, as this unit connects; None for HTTP(S)."""
    if not url.startswith(SCHEME):
        return None
    return MqttTransport(cfg.mqtt, device_id=cfg.device.id, password=cfg.mqtt_password(), prefix=cfg.mqtt.prefix,
                         timeout_s=timeout_s)
