"""The one way the product makes an MQTT client: paho 2.x, v5 or 3.1.1, TLS, backoff, and an outage told once.

paho logs "Client is not connected" at every reconnect attempt of an outage, and a refused password would be logged
at every retry: :class:`OutageLog` says each distinct failure once (again only if it changes, or after
``RELOG_AFTER_S``), so a wrong password or a broker away for a week is one line in the journal, not thousands.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK, PUBLISH
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contract.settings import BrokerSettings, TlsSettings

RELOG_AFTER_S = 600.0


class _OutageNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


PAHO_LOG = logging.getLogger("paho")
PAHO_LOG.addFilter(_OutageNoise())


def apply_tls(client: mqtt.Client, tls: TlsSettings) -> None:
    """TLS with certificate verification (and a client certificate when given)."""
    client.tls_set(ca_certs=str(tls.ca_file) if tls.ca_file else None,
                   certfile=str(tls.cert_file) if tls.cert_file else None,
                   keyfile=str(tls.key_file) if tls.key_file else None,
                   cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.tls_insecure_set(tls.insecure)


_SUCCESS = ReasonCode(PacketTypes.PUBACK, "Success")  # shared by every plain PUBACK: callbacks must not change them
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
READ_CHUNK = 65536  # what one recv may take: a burst of acknowledgements, or a part of a large message


class Client(mqtt.Client):
    """paho's client, with the traffic of a unit that publishes a QoS 1 message per frame taken in bulk.

    A result's whole budget beyond inference is 0.25 ms of the unit's CPU (``docs/benchmarks.md``), and paho spends
    it per packet:

    - **Acknowledgements in short.** paho decodes every PUBACK into a new ``ReasonCode`` and a new ``Properties``,
      whose constructor builds a table of all 27 MQTT v5 properties: 10 µs per QoS 1 message. A PUBACK of two bytes
      (3.1.1's only form; v5's "success, no properties") is handled here as paho would, with shared success
      objects; any other goes to paho.
    - **Reads in bulk.** paho reads a packet a byte at a time (its type, then its length, then the rest): three
      ``recv`` calls per PUBACK. Here one ``recv`` takes what has arrived, and paho's reads are served from it;
      :meth:`loop_read` returns only once nothing is left in memory, so a ``select`` on the socket still sees
      every packet that waits. The acknowledgements of stored messages in what was read are taken in one pass
      (:meth:`_take_acks`): through paho's reader each still cost 4.3 µs, here 0.6.
    - **Writes in bulk.** paho writes each queued packet with a ``send`` of its own: on loopback every one runs
      the broker's side of TCP too. Consecutive QoS 1 and 2 PUBLISH packets at the head of the queue go as one
      write; paho has nothing to do when one of those is written (its PUBACK completes it), unlike a QoS 0
      PUBLISH or a DISCONNECT, which go as paho writes them.
    - **Stored messages outside paho's books.** For each publish paho builds a message, a record with a condition
      variable and an entry in its own store, which it sends again on a new connection. A caller that keeps its
      messages itself (the unit's outbox) publishes them with :meth:`publish_stored`, packed as one write, and
      collects their acknowledgements with :meth:`take_acked`.
    """

    _read: bytes = b""  # what the last recv brought and paho has not taken yet, from _read_at on
    _read_at = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._awaiting: set[int] = set()  # packet ids of stored messages sent on this connection, not acknowledged
        self._acked: list[int] = []  # ... and of those acknowledged, until the caller takes them

    def publish_stored(self, messages: Sequence[tuple[str, bytes, bool]]) -> list[int]:
        """Publish ``(topic, payload, retain)`` at QoS 1, queued as one write after what paho has queued; their packet
        ids, in order, or none when not connected. paho keeps no record of them: the caller keeps them, and sends
        again on a new connection those whose ids :meth:`take_acked` has not returned."""
        if not self.is_connected() or not messages:
            return []
        v5 = self._protocol == mqtt.MQTTv5
        data, mids = bytearray(), []
        for topic, payload, retain in messages:
            name = topic.encode()
            mid = self._mid_generate()
            data.append(PUBLISH | 0x02 | int(retain))  # QoS 1
            self._pack_remaining_length(data, 2 + len(name) + 2 + v5 + len(payload))
            data += len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big")
            if v5:
                data.append(0)  # no properties
            data += payload
            mids.append(mid)
        self._awaiting.update(mids)
        self._packet_queue(PUBLISH | 0x02, data, mids[0], 1)
        return mids

    def acked_waiting(self) -> bool:
        """Whether :meth:`take_acked` has ids to return."""
        return bool(self._acked)

    def take_acked(self) -> list[int]:
        """The packet ids of :meth:`publish_stored` messages the broker has acknowledged since the last call."""
        acked, self._acked = self._acked, []
        return acked

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        mid = int.from_bytes(packet[:2], "big")
        if cmd == "PUBACK" and len(packet) >= 2 and self._stored_acked(mid):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_at >= len(self._read):
            self._read, self._read_at = super()._sock_recv(READ_CHUNK), 0  # b"": the broker closed it
            if not self._read:
                return self._read
        start = self._read_at
        self._read_at = min(start + bufsize, len(self._read))
        return self._read[start:self._read_at]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's, until no byte of what was read waits in memory: paho stops after as many packets as it has
        messages in flight, and a command read beside them must not wait for the next packet to arrive."""
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._read_at < len(self._read) and self._sock is not None:
            if not self._take_acks():
                rc = super().loop_read(max_packets)
        return rc

    def _take_acks(self) -> bool:
        """Take the PUBACKs of :meth:`publish_stored` messages that wait whole in memory, from a packet boundary on,
        as :meth:`_handle_pubackcomp` would (whatever the reason code and properties); whether it took any. It stops
        at anything else: a PUBACK of paho's own message, another packet, one not read whole, a malformed one. paho
        reads those."""
        if self._in_packet["command"]:  # paho has read part of a packet: the rest of it is next
            return False
        buf, at, end = self._read, self._read_at, len(self._read)
        start = at
        while at + 4 <= end and buf[at] == PUBACK and 2 <= buf[at + 1] < 128 and at + 2 + buf[at + 1] <= end:
            if not self._stored_acked((buf[at + 2] << 8) | buf[at + 3]):
                break
            at += 2 + buf[at + 1]
        if at == start:
            return False
        self._read_at = at
        with self._msgtime_mutex:  # the keepalive's clock, as paho sets it for each packet it reads
            self._last_bytes_received = mqtt.time_func()
        return True

    def _stored_acked(self, mid: int) -> bool:
        """A PUBACK for ``mid``: if it is a stored message's, it is done, whatever the reason code (paho too completes
        a message on any acknowledgement), and :meth:`take_acked` returns it; whether it was one."""
        if mid not in self._awaiting:
            return False
        self._awaiting.discard(mid)
        self._acked.append(mid)
        return True

    def _sock_close(self) -> None:
        self._read, self._read_at = b"", 0  # the next connection's bytes are its own
        self._awaiting.clear()  # no acknowledgement of them can come now: the caller sends them again
        super()._sock_close()

    def _packet_write(self) -> MQTTErrorCode:
        queue = self._out_packet
        if len(queue) > 1 and _completes_by_ack(queue[0]) and _completes_by_ack(queue[1]):
            # Only this thread takes from the head; another may append at the tail meanwhile, which stays after.
            first = queue.popleft()
            data = bytearray(first["packet"][first["pos"]:])
            while queue and _completes_by_ack(queue[0]):
                data += queue.popleft()["packet"]
            queue.appendleft({**first, "packet": data, "pos": 0, "to_process": len(data)})
        return super()._packet_write()


def _completes_by_ack(packet: Any) -> bool:
    """A QoS 1 or 2 PUBLISH: once written, it leaves paho nothing to do (its acknowledgement completes it)."""
    return bool(packet["command"] & 0xF0 == PUBLISH and packet["qos"] > 0)


def make_client(settings: BrokerSettings, *, client_id: str, password: str, will: tuple[str, bytes] | None = None,
                manual_ack: bool = False, persistent: bool = False) -> Client:
    """A configured, not yet connected client.

    ``persistent``: a session the broker keeps while the client is away (see :func:`connect_async`), so QoS 1
    messages published meanwhile are delivered on return. ``will``: the retained
    message the broker publishes when the client vanishes (topic, payload).
    """
    v5 = settings.protocol == "5"
    client = Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id or client_id,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                    clean_session=None if v5 else not persistent, manual_ack=manual_ack)
    client.enable_logger(PAHO_LOG)
    if settings.username:
        client.username_pw_set(settings.username, password or None)
    if settings.tls:
        apply_tls(client, settings.tls)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=max(1, round(settings.reconnect_min_s)),
                               max_delay=max(1, round(settings.reconnect_max_s)))
    return client


def connect_async(client: mqtt.Client, settings: BrokerSettings, *, persistent: bool = False,
                  session_expiry_s: int = 86400, own_loop: bool = False) -> None:
    """Connect in the background and keep reconnecting. ``persistent``: the broker keeps the session (and the QoS 1
    messages for it) for ``session_expiry_s`` while the client is away (MQTT v5; 3.1.1 keeps it indefinitely).
    ``own_loop``: only set the connection up; the caller connects and runs paho's loop on a thread of its own (the
    unit's link does, beside its outbox)."""
    kwargs: dict[str, Any] = {}
    if settings.protocol == "5":
        kwargs["clean_start"] = not persistent
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s
            kwargs["properties"] = props
    else:
        kwargs["clean_start"] = mqtt.MQTT_CLEAN_START_FIRST_ONLY
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive, **kwargs)
    if not own_loop:
        client.loop_start()


def reason(rc: Any) -> str:
    return str(getattr(rc, "getName", lambda: rc)())


class OutageLog:
    """Counts connection failures and logs each distinct one once; call it from paho's callbacks or the loop that
    connects."""

    def __init__(self, log: logging.Logger, settings: BrokerSettings):
        self.log = log
        self.where = f"mqtt {settings.host}:{settings.port}"
        self.connects = 0
        self.failures = 0
        self.last_error = ""
        self._logged, self._logged_at = "", 0.0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def failed(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        now = time.monotonic()
        if message != self._logged or now - self._logged_at > RELOG_AFTER_S:
            self._logged, self._logged_at = message, now
            self.log.error("%s: %s; retrying with backoff", self.where, message)

    def refused(self, rc: Any) -> None:
        self.failed(f"broker refused the connection: {reason(rc)}")

    def cannot_connect(self) -> None:
        """Inside the ``except OSError`` of a connect attempt: paho's ``on_connect_fail`` (called there without the
        error), or a caller's own reconnect."""
        err = sys.exc_info()[1]
        self.failed(f"cannot connect: {err}" if err else "cannot connect")

    def connected(self) -> None:
        self._logged = ""
        self.connects += 1

    def lost(self, rc: Any) -> None:
        self.last_error = f"disconnected: {reason(rc)}"
        self.log.warning("%s %s; reconnecting with backoff", self.where, self.last_error)


def no_delay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off on ``client``'s connection (call it on connect).

    paho writes each packet on its own; with Nagle on, a small publish that follows another one (a command's reply,
    then the verdict it triggered) waits for the first one's acknowledgement, which Linux delays up to 40 ms.
    Measured by ``bench.line``: trigger to verdict over MQTT took 46 ms with it, against 11 ms inside the unit.
    """
    sock = client.socket()
    if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too; paho's websocket wrapper is not
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
