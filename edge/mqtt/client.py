"""The unit's link to the broker: paho-mqtt 2.x, reconnecting forever, draining the outbox in order.

On every connect (first or after an outage) it subscribes to its commands, publishes ``available=online`` and the
retained ``status``, and starts sending the outbox from its oldest message. QoS 1 messages are only ever published
from the outbox and deleted from it when the broker's PUBACK arrives, so an outage or a crash loses nothing; a
message whose PUBACK was lost is sent again (QoS 1 means at least once; alerts carry a dedup key for that).

One thread, the link's, runs paho's network loop through paho's external-loop calls (``loop_read``, ``loop_write``,
``loop_misc`` on its own ``select``) and the outbox beside it, and reconnects with backoff. With paho's own network
thread beside a drainer thread, every publish woke that thread through a socket pair and every acknowledgement woke
the drainer back: QoS 1 results handed over at 290 a second cost the process 0.14-0.19 ms of CPU each on this
machine, against 0.10-0.11 ms on one thread (with :class:`contract.mqtt.Client`'s short acknowledgements; eight runs
of each, interleaved). Only the link's thread touches the in-flight list and paho's socket; other threads hand it
messages (the outbox, two queues) and wake it with a byte on a socket pair of its own, once per batch.

The link works in batches. Woken by a new message or an acknowledgement while it is keeping up, it first lingers
:data:`LINGER_S`, so that one outbox query, one run of publishes and one acknowledgement commit serve every message of
that moment; woken per message, it cost a Raspberry Pi two thread hand-overs and two commits per result, taken from
inference. While a backlog drains (after an outage) it does not linger: acknowledgements free room in the window of
messages in flight (``mqtt.max_inflight``), and the next messages go at once. Nor does it linger for a message
someone waits on (:data:`URGENT_KINDS`: a part's verdict, an alert, a command's reply): that one ends the linger,
and takes the results of the moment with it.

QoS 0 messages (results, by default) go in the same batches, from a queue in memory rather than the outbox: handed
to paho one by one, each cost the unit 0.2-0.3 ms of CPU per result and the broker 0.1 ms more; in a batch the broker
reads many messages per read. A result reaches the broker up to :data:`LINGER_S` later.

Results at QoS 1 are stored by the link's thread too, a batch in one transaction, before it sends them: stored one by
one, each cost 0.3 ms (a transaction, and the outbox's lock shared with the acknowledgements), 3-4 % of MobileNetV2's
frame time here, when that was on the inference loop. A result is durable within :data:`LINGER_S` of being
published, rather than at once: a crash loses at most that moment's results. Every other QoS 1 message (alerts,
verdicts, images, replies) is stored at once, after the results held before it, so the outbox keeps the order in
which messages were published. If the results cannot be stored, the link says so in one line and keeps them; once
:data:`HELD_MAX` wait, the next result is stored at once, and the outbox's error reaches the caller as it always did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import select
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract import mqtt as mqttc
from contract import topics
from edge.config import EdgeConfig
from edge.mqtt.outbox import Outbox, Outgoing

log = logging.getLogger(__name__)

LINGER_S = 0.05  # what a message may wait for its batch: far below what a dashboard or a mail notices
HELD_KINDS = frozenset({"result"})  # QoS 1 messages the link's thread stores in batches: one per frame
HELD_MAX = 500  # results waiting to be stored, at most: beyond it the outbox's error is the caller's
URGENT_KINDS = frozenset({"part", "alert", "reply"})  # a PLC, a person or a caller waits on these: sent at once
IDLE_S = 0.5  # a batch at least this often: held results an outbox could not take are tried again
TICK_S = 1.0  # paho's keepalive and timeouts are looked at least this often

CommandHandler = Callable[[str, mqtt.MQTTMessage], None]


@dataclass
class LinkStats:
    dropped_qos0: int = 0
    sent: int = 0
    acked: int = 0


class MqttLink:
    def __init__(self, cfg: EdgeConfig, outbox: Outbox, *, on_command: CommandHandler,
                 status: Callable[[], bytes], discovery: Callable[[], list[tuple[str, bytes]]] = list,
                 instance: tuple[str, float] = ("", 0.0)):
        self.cfg = cfg
        self.base = cfg.base_topic
        self.outbox = outbox
        self.stats = LinkStats()
        self._on_command = on_command
        self._status = status
        self._discovery = discovery
        self._ha_status = f"{cfg.homeassistant.prefix}/status" if cfg.homeassistant.enabled else ""
        self.instance_id, self._started_at = instance
        self.twin: str | None = None  # another process connected as this unit: what it said of itself
        self._twin_said = 0.0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._restart = threading.Event()  # set on connect: send everything unacknowledged again, oldest first
        # The link's thread only: what is in flight, and when the next batch is due.
        self._inflight: dict[int, int] = {}  # packet id -> outbox id, of the messages sent and not acknowledged
        self._last_sent = 0  # highest outbox id sent since the last connect
        self._due = math.inf  # monotonic time of the next batch
        self._last_batch = 0.0
        self._backlog = False  # the window was full last time: acknowledgements, not new messages, are the news
        self._delay: float | None = None  # the reconnect backoff; None: the next wait is the shortest
        # Handed over by other threads.
        self._live: deque[tuple[str, bytes, bool]] = deque()  # QoS 0 messages waiting for the next batch
        self._held: deque[Outgoing] = deque()  # QoS 1 results waiting for the link's thread to store them
        self._store_lock = threading.Lock()  # storing the held results, and anything stored after them
        self._store_error = ""  # the outbox's last error storing held results, said once
        self._urgent = False  # a message someone waits on: the link's thread stops lingering
        self._poked = False  # a wake byte is on its way for this batch: the next message need not send another
        self._wake_r: socket.socket | None = None  # the link's thread's own socket pair, while it runs
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._deadline = math.inf  # stop(): the outbox drains until then
        m = cfg.mqtt
        self.v5 = m.protocol == "5"
        self.outage = mqttc.OutageLog(log, m)
        self.client = mqttc.make_client(m, client_id=f"defect-edge-{cfg.device.id}", password=cfg.mqtt_password(),
                                        will=(self.topic(topics.AVAILABLE), topics.OFFLINE))
        self.client.max_inflight_messages_set(m.max_inflight)
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message
        self.client.on_socket_register_write = self._paho_wants_write

    def topic(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        # A clean session every time: a `trigger` queued by the broker while the unit was away must not fire late,
        # and whatever was not acknowledged is in the outbox anyway.
        mqttc.connect_async(self.client, self.cfg.mqtt, persistent=False, own_loop=True)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, *, flush_s: float = 2.0) -> None:
        """Give the outbox ``flush_s`` to drain, publish ``offline``, then disconnect cleanly."""
        self._deadline = time.monotonic() + flush_s
        self._stop.set()
        self._poke(urgent=True)
        if self._thread:
            # A connect under way (paho's own timeout) may hold the thread beyond the deadline: not this caller.
            self._thread.join(timeout=flush_s + 1.0)
        self._store_held_or_say()  # the last results, kept for the next start if not sent
        self._connected.clear()
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()

    # -- publishing ------------------------------------------------------------------------------------------
    def publish(self, suffix: str, payload: bytes, *, qos: Literal[0, 1], kind: str, retain: bool = False) -> None:
        """QoS 1: stored in the outbox, then sent. QoS 0: sent with the next batch if connected, else dropped and
        counted."""
        topic = self.topic(suffix)
        if qos == 0:
            if not self.connected:
                self.stats.dropped_qos0 += 1
                return
            self._live.append((topic, payload, retain))
            self._poke()
            return
        message = Outgoing(topic, payload, qos, retain, kind)
        if kind in HELD_KINDS and len(self._held) < HELD_MAX:
            self._held.append(message)
            self._poke()
        else:
            self._store([message])

    def publish_many(self, messages: list[tuple[str, bytes, str]], *, settles: int | None = None) -> None:
        """QoS 1 messages ``(suffix, payload, kind)``, stored in one transaction in order, then sent. ``settles``:
        the part whose verdict they carry, forgotten by the outbox in that transaction (:meth:`Outbox.put_many`)."""
        self._store([Outgoing(self.topic(suffix), payload, 1, False, kind) for suffix, payload, kind in messages],
                    settles=settles)

    def _store(self, messages: list[Outgoing], *, settles: int | None = None) -> None:
        with self._store_lock:
            self._store_held()
            self.outbox.put_many(messages, settles=settles)
        self._poke(urgent=any(m.kind in URGENT_KINDS for m in messages))

    def _poke(self, *, urgent: bool = False) -> None:
        """Wake the link's thread: one byte per batch (the flag is cleared when a batch takes the messages), and
        one for each urgent message, which must not wait for a linger already under way."""
        if urgent:
            self._urgent = True
        elif self._poked:
            return
        self._poked = True
        if self._wake_w is not None:  # else no thread runs to be woken
            with contextlib.suppress(OSError):  # the pair is full (the thread wakes anyway), or closed: it stopped
                self._wake_w.send(b"\0")

    def _paho_wants_write(self, _client: mqtt.Client, _ud: Any, _sock: Any) -> None:
        """paho queued a packet. On the link's thread the next ``select`` sees it; from another thread (a command's
        reply) the link's thread must be woken to write it."""
        if threading.current_thread() is not self._thread:
            self._poke(urgent=True)

    def _store_held(self) -> None:
        """Store the held results in one transaction; on failure they stay held, in order. Under ``_store_lock``."""
        batch = [self._held.popleft() for _ in range(len(self._held))]
        if not batch:
            return
        try:
            self.outbox.put_many(batch)
        except BaseException:
            self._held.extendleft(reversed(batch))
            raise

    def _store_held_or_say(self) -> None:
        """The link's turn at the held results: an outbox that cannot take them is said once, and tried again."""
        with self._store_lock:
            try:
                self._store_held()
                self._store_error = ""
            except sqlite3.Error as e:
                if str(e) != self._store_error:
                    log.error("outbox: %d results wait to be stored: %s", len(self._held), e)
                self._store_error = str(e)

    def publish_direct(self, topic: str, payload: bytes, *, properties: Properties | None = None) -> None:
        """A QoS 1 message that is only meaningful now (a command reply to a v5 response topic)."""
        if self.connected:
            self.client.publish(topic, payload, qos=1, properties=properties)

    # -- the link's thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set() or not self._finished():
            try:
                if self.client.socket() is None:
                    self._reconnect()
                else:
                    self._step()
            except Exception:  # a bug here must not end the unit's only link: said, and the loop goes on
                log.exception("mqtt link: unexpected error; carrying on")
                self._stop.wait(1.0)
        self._say_goodbye()

    def _finished(self) -> bool:
        """Stopping: the outbox has drained, or cannot (no broker), or its time is up."""
        return (not self.connected or time.monotonic() >= self._deadline
                or not (self._held or self._live or self.outbox.depth()[0]))

    def _reconnect(self) -> None:
        """Connect (at once the first time, then after a backoff that doubles up to ``reconnect_max_s`` and starts
        again from ``reconnect_min_s`` after a successful connect)."""
        m = self.cfg.mqtt
        self._collect_acks()  # the acknowledgements that came before the connection went
        self._store_held_or_say()  # no broker is no reason to keep results in memory only
        if self.outage.connects or self.outage.failures:
            self._delay = m.reconnect_min_s if self._delay is None else min(self._delay * 2, m.reconnect_max_s)
            until = time.monotonic() + self._delay
            while not self._stop.wait(min(IDLE_S, max(0.0, until - time.monotonic()))):
                self._store_held_or_say()
                if time.monotonic() >= until:
                    break
            if self._stop.is_set():
                return
        try:
            self.client.reconnect()
        except OSError:
            self.outage.cannot_connect()

    def _step(self) -> None:
        """One turn of the loop: wait for the socket, a wake or the next batch; read, write, keep alive."""
        sock, wake = self.client.socket(), self._wake_r
        assert sock is not None and wake is not None
        buffered = getattr(sock, "pending", lambda: 0)()  # TLS: bytes already decrypted that select cannot see
        timeout = 0.0 if buffered else min(TICK_S, max(0.0, self._batch_at() - time.monotonic()))
        try:
            readable, writable, _ = select.select([sock, wake],
                                                  [sock] if self.client.want_write() else [], [], timeout)
        except (OSError, ValueError):  # the socket was closed under the select: the next loop_* says so
            readable, writable = [sock], []
        if wake in readable:
            self._woken(wake)
        if sock in readable or buffered:
            self.client.loop_read()
            if self._inflight and self.client.acked_waiting():
                self._news()
        if sock in writable:
            self.client.loop_write()
        self.client.loop_misc()
        if time.monotonic() >= self._batch_at():
            self._batch()

    def _batch_at(self) -> float:
        """When the next batch runs: when one is due, and at least every :data:`IDLE_S`."""
        return min(self._due, self._last_batch + IDLE_S)

    def _woken(self, wake: socket.socket) -> None:
        with contextlib.suppress(OSError):
            wake.recv(4096)
        self._news()

    def _news(self) -> None:
        """A message was handed over or acknowledged: a batch after the linger, or at once for an urgent message,
        while a backlog drains (acknowledgements free the window) and while stopping."""
        if self._urgent or self._backlog or self._stop.is_set():
            self._due = time.monotonic()
        elif self._due == math.inf:
            self._due = time.monotonic() + LINGER_S

    def _batch(self) -> None:
        """Store the held results, forget what was acknowledged, send the waiting QoS 0 messages and as much of the
        outbox as the window of messages in flight takes, packed as one write (``Client.publish_stored``)."""
        self._due, self._last_batch = math.inf, time.monotonic()
        self._poked = self._urgent = False  # messages handed over from here on wake the thread again
        self._collect_acks()  # before a reconnect's restart: what the broker acknowledged is not sent again
        if self._restart.is_set():
            self._restart.clear()
            self._inflight, self._last_sent = {}, 0
        self._store_held_or_say()
        self._send_live()
        self._backlog = False
        window = self.cfg.mqtt.max_inflight
        while self.connected and not self._restart.is_set():
            room = window - len(self._inflight)
            if room <= 0:
                self._backlog = True
                break
            batch = self.outbox.pending(after_id=self._last_sent, limit=room)
            if not batch:
                break
            mids = self.client.publish_stored([(msg.topic, msg.payload, msg.retain) for msg in batch])
            if not mids:
                break  # the connection just dropped: the next connect starts again from the oldest
            self._inflight.update(zip(mids, (msg.id for msg in batch), strict=True))
            self._last_sent = batch[-1].id
            self.stats.sent += len(mids)
        if self.client.want_write():
            self.client.loop_write()
        if self._stop.is_set():  # draining to stop: no lingering, and no spinning while acknowledgements come
            self._due = time.monotonic() + 0.01

    def _collect_acks(self) -> None:
        done = [self._inflight.pop(mid) for mid in self.client.take_acked() if mid in self._inflight]
        if done:
            self.outbox.ack(done)
            self.stats.acked += len(done)

    def _send_live(self) -> None:
        """Hand the waiting QoS 0 messages to paho."""
        while self._live:
            topic, payload, retain = self._live.popleft()
            if not self.connected or self.client.publish(topic, payload, qos=0, retain=retain).rc != 0:
                self.stats.dropped_qos0 += 1

    def _say_goodbye(self) -> None:
        """Stopping: the last results stored, the last QoS 0 messages sent, ``offline`` published and acknowledged
        (until the deadline), and a clean disconnect, so the broker does not publish the will."""
        self._store_held_or_say()
        self._send_live()
        if self.connected:
            info = self.client.publish(self.topic(topics.AVAILABLE), topics.OFFLINE, qos=1, retain=True)
            while self.client.socket() is not None and not info.is_published() and time.monotonic() < self._deadline:
                self._step()
        self._connected.clear()
        self.client.disconnect()
        if self.client.socket() is not None:
            self.client.loop_write()  # the DISCONNECT; paho closes the socket once it is written

    # -- paho callbacks (the link's thread) -------------------------------------------------------------------
    def _handle_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode,
                        _props: Properties | None) -> None:
        if rc.is_failure:
            self.outage.refused(rc)
            return
        self.outage.connected()
        mqttc.no_delay(client)
        # MQTT delivers a live retained publish with retain=0; v5's "retain as published" keeps the flag, so a
        # retained command is recognised (and ignored) even when it arrives while the unit is subscribed.
        client.subscribe(self.topic(topics.CMD, "+"),
                         options=SubscribeOptions(qos=1, retainAsPublished=True) if self.v5 else None,
                         qos=0 if self.v5 else 1)
        if self.instance_id:  # the retained status tells whether another process runs as this unit
            client.subscribe(self.topic(topics.STATUS), qos=1)
        client.publish(self.topic(topics.AVAILABLE), topics.ONLINE, qos=1, retain=True)
        client.publish(self.topic(topics.STATUS), self._status(), qos=1, retain=True)
        if self._ha_status:
            client.subscribe(self._ha_status, qos=1)
            self._announce()
        self._restart.set()  # everything not acknowledged goes again, oldest first
        self._connected.set()
        self._delay = None  # the next outage's backoff starts from the shortest wait
        self._due = time.monotonic()
        log.info("mqtt connected to %s:%d as %s", self.cfg.mqtt.host, self.cfg.mqtt.port, self.base)

    def _announce(self) -> None:
        for topic, payload in self._discovery():
            self.client.publish(topic, payload, qos=1, retain=True)

    def _handle_disconnect(self, _client: mqtt.Client, _ud: Any, _flags: Any, rc: ReasonCode,
                           _props: Properties | None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stop.is_set():
            self.outage.lost(rc)

    def _twin(self, payload: bytes | bytearray) -> None:
        """A status on this unit's own topic from another process that spoke after this one started: two units
        share a device id (or a unit runs twice), and the broker hands the connection from one to the other in a
        loop ("disconnected: Unspecified error" on both). Said in one line, once a minute, and on ``status``."""
        try:
            data = json.loads(payload)
            other, started = str(data["instance_id"]), topics.epoch(data["started_at"])
            spoke = started + float(data["uptime_s"])
        except (ValueError, KeyError, TypeError):
            return
        if other == self.instance_id or spoke < self._started_at:
            return  # this process's own, or the last run's, left retained
        self.twin = f"instance {other[:12]}, started {data['started_at']}"
        if time.monotonic() - self._twin_said >= 60:
            self._twin_said = time.monotonic()
            log.error("another process is connected as device %r (%s): two units with one device.id knock each "
                      "other off the broker; give each unit its own id, or stop the second one", self.cfg.device.id,
                      self.twin)

    def _handle_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topic(topics.STATUS):
            self._twin(msg.payload)
            return
        if self._ha_status and msg.topic == self._ha_status:
            if msg.payload == b"online":  # Home Assistant restarted: tell it about this unit again
                self._announce()
            return
        name = topics.command_name(self.base, msg.topic)
        if name is None:
            return
        try:
            self._on_command(name, msg)
        except Exception:  # a command handler bug must never take down the network thread
            log.exception("command %s failed", name)
