"""The store-and-forward outbox: durable, ordered, bounded, shedding the least valuable first and counting it."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contract import mqtt as mqttc
from contract.settings import BrokerSettings
from edge import config
from edge.mqtt import client
from edge.mqtt.client import MqttLink
from edge.mqtt.outbox import Outbox, Outgoing
from harness.broker import Broker, Collector
from harness.wait import until


def test_survives_reopen_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=10_000)
    ids = [box.put(f"t/{i}", b"x" * 10, kind="alert") for i in range(5)]
    box.ack([ids[1]])
    box.close()
    again = Outbox(tmp_path / "s.db", max_bytes=10_000)
    assert [m.topic for m in again.pending()] == ["t/0", "t/2", "t/3", "t/4"]
    assert [m.topic for m in again.pending(after_id=ids[2], limit=1)] == ["t/3"]
    assert again.depth() == (4, 4 * (10 + 3))


def test_acknowledgements_forget_each_message_once(tmp_path: Path) -> None:
    """An acknowledgement repeated, or for a message no longer kept (sent again after a reconnect, acknowledged
    twice), forgets nothing else and counts no byte twice."""
    box = Outbox(tmp_path / "s.db", max_bytes=10_000)
    ids = [box.put(f"t/{i}", b"x" * 10, kind="alert") for i in range(5)]
    box.ack([ids[3], ids[0], ids[3]])
    box.ack([ids[0], ids[4] + 100])
    assert [m.id for m in box.pending()] == [ids[1], ids[2], ids[4]] and box.depth() == (3, 3 * (10 + 3))
    box.ack([])
    assert box.depth() == (3, 39)


def test_full_outbox_sheds_results_then_metrics_then_images_then_alerts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=1000)
    for kind in ("alert", "result", "metrics", "image", "result", "alert", "metrics"):
        box.put("k", b"." * 99, kind=kind)  # a message's size is its topic plus its payload: 100 bytes each
    assert box.depth() == (7, 700) and not box.shed_counts()
    box.put("k", b"." * 499, kind="alert")  # 200 bytes too many: both results go
    assert [m.kind for m in box.pending()] == ["alert", "metrics", "image", "alert", "metrics", "alert"]
    assert box.shed_counts() == {"result": 2}
    box.put("k", b"." * 399, kind="alert")  # 400 too many: both metrics, the image, then the oldest alert
    assert box.shed_counts() == {"result": 2, "metrics": 2, "image": 1, "alert": 1}
    assert [m.kind for m in box.pending()] == ["alert", "alert", "alert"]
    assert box.depth() == (3, 1000)


def test_a_result_never_displaces_an_alert(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=300)
    box.put("a", b"." * 250, kind="alert")
    box.put("r", b"." * 100, kind="result")  # over the bound, but nothing less valuable to shed: kept
    assert [m.kind for m in box.pending()] == ["alert", "result"] and not box.shed_counts()
    box.put("m", b"." * 100, kind="metrics")  # sheds the result, not the alert
    assert [m.kind for m in box.pending()] == ["alert", "metrics"] and box.shed_counts() == {"result": 1}


def test_a_batch_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=300)
    box.put_many([Outgoing("r", b"." * 99, kind="result"), Outgoing("r", b"." * 99, kind="result")])
    with pytest.raises(KeyError):  # the first sheds a result, the second is of no known kind
        box.put_many([Outgoing("a", b"." * 199, kind="alert"), Outgoing("x", b".", kind="bogus")])
    assert box.depth() == (2, 200) and not box.shed_counts(), "the shedding was rolled back with the batch"
    assert box.put_many([Outgoing("a", b"." * 199, kind="alert")]) == [3]
    assert box.depth() == (2, 300) and box.shed_counts() == {"result": 1}


def _link(tmp_path: Path, box: Outbox, port: int | None = None, **mqtt: object) -> MqttLink:
    """Unit ``u1``'s link under prefix ``t``; without ``port``, to a port nothing listens on (storing does not wait
    for a broker)."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    cfg = config.parse({"device": {"id": "u1"}, "camera": {"source": "0"}, "state": {"dir": str(tmp_path)},
                        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "t", **mqtt}}, check_files=False)
    return MqttLink(cfg, box, on_command=lambda *_: None, status=lambda: b"{}")


def test_results_are_stored_in_batches_in_the_order_published(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=1_000_000)
    box._db.execute("PRAGMA busy_timeout = 50")  # a locked database fails in 50 ms, not the default 30 s
    link = _link(tmp_path, box)
    link.publish("result", b"r1", qos=1, kind="result")
    link.publish("result", b"r2", qos=1, kind="result")
    assert box.depth()[0] == 0, "results wait for the link's thread"
    link.publish("alert", b"a1", qos=1, kind="alert")
    assert [m.payload for m in box.pending()] == [b"r1", b"r2", b"a1"], "an alert is stored at once, after them"

    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    link.publish("result", b"r3", qos=1, kind="result")
    link._store_held_or_say()
    link._store_held_or_say()
    said = [r.getMessage() for r in caplog.records if "wait to be stored" in r.getMessage()]
    assert said == ["outbox: 1 results wait to be stored: database is locked"], "said once, not per attempt"
    with pytest.raises(sqlite3.OperationalError):
        link.publish("alert", b"a2", qos=1, kind="alert")  # the caller of a message stored at once is told
    other.execute("ROLLBACK")
    other.close()

    link.start()  # the link's thread stores what is held, without a broker
    link.publish("result", b"r4", qos=1, kind="result")
    until(lambda: box.depth()[0] >= 5, 10)
    assert box.depth()[0] == 5, "stored while the broker is away, not only when the link stops"
    link.stop(flush_s=0)
    assert [m.payload for m in box.pending()] == [b"r1", b"r2", b"a1", b"r3", b"r4"], "nothing lost, in order"
    box.close()


def test_results_beyond_the_bound_are_stored_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "HELD_MAX", 2)
    box = Outbox(tmp_path / "s.db", max_bytes=1_000_000)
    link = _link(tmp_path, box)
    for i in range(3):
        link.publish("result", f"r{i}".encode(), qos=1, kind="result")
    assert [m.payload for m in box.pending()] == [b"r0", b"r1", b"r2"]
    box.close()


def test_one_thread_runs_the_link_and_is_woken_for_a_reply_from_another(
        tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without its wake, the link's thread would next look at its socket in 30 s: the reply would not arrive.
    monkeypatch.setattr(client, "IDLE_S", 30.0)
    monkeypatch.setattr(client, "TICK_S", 30.0)
    collector = Collector(broker.port, "t/u1/#", "replies/#")
    box = Outbox(tmp_path / "s.db", max_bytes=10_000_000)
    link = _link(tmp_path, box, broker.port)
    link.start()
    try:
        assert collector.wait(lambda ms: any(t == "t/u1/available" for t, _, _ in ms), 10)
        assert "paho-mqtt-client-defect-edge-u1" not in [t.name for t in threading.enumerate()], "paho runs none"
        for i in range(300):
            link.publish("result", f"r{i}".encode(), qos=1, kind="result")
        link.publish("alert", b"a", qos=1, kind="alert")
        assert collector.wait(lambda ms: len([t for t, _, _ in ms if t in ("t/u1/result", "t/u1/alert")]) == 301)
        assert collector.on("/result") == [f"r{i}".encode() for i in range(300)], "in order, each once"
        until(lambda: not box.depth()[0], 10)
        assert box.depth() == (0, 0) and link.stats.acked == link.stats.sent == 301

        replier = threading.Thread(target=link.publish_direct, args=("replies/1", b"done"))
        replier.start()
        replier.join()
        assert collector.wait(lambda ms: ("replies/1", b"done", False) in ms, 10), "written without waiting 30 s"
    finally:
        link.stop()
        box.close()
    assert collector.wait(lambda ms: ("t/u1/available", b"offline", True) in ms or
                          ("t/u1/available", b"offline", False) in ms, 10), "said offline on a clean stop"
    collector.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acknowledgements_taken_in_short_and_in_full(broker: Broker, protocol: str) -> None:
    """A two-byte PUBACK (a subscriber was there) goes the short way, a v5 one with a reason code (none was) goes
    to paho: both mark the message published and free paho's window."""
    settings = BrokerSettings(host="127.0.0.1", port=broker.port, protocol=protocol)
    c = mqttc.make_client(settings, client_id="acks", password="")
    c.max_inflight_messages_set(4)
    said: list[str] = []
    c.on_publish = lambda _c, _u, _mid, rc, _p: said.append(str(rc))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        alone = [c.publish("nobody/listens", b"x", qos=1) for _ in range(10)]
        for info in alone:
            info.wait_for_publish(10)
        collector = Collector(broker.port, "heard/#")
        collector.publish("heard/probe", b"p")  # its own message back: the subscription is in place
        assert collector.wait(lambda ms: len(ms) == 1, 10)
        heard = [c.publish("heard/x", b"y", qos=1) for _ in range(10)]
        for info in heard:
            info.wait_for_publish(10)
        collector.close()
    finally:
        c.disconnect()
        c.loop_stop()
    assert all(i.is_published() for i in alone + heard)
    assert said[10:] == ["Success"] * 10
    assert said[:10] == (["No matching subscribers"] if protocol == "5" else ["Success"]) * 10


def _connected_by_hand(port: int, protocol: str = "3.1.1") -> mqttc.Client:
    """A unit's client on an external loop, as the link runs it: queued packets wait for ``loop_write``."""
    c = mqttc.make_client(BrokerSettings(host="127.0.0.1", port=port, protocol=protocol), client_id="bulk",
                          password="")
    c.on_socket_register_write = lambda *_: None
    c.max_inflight_messages_set(50)
    c.connect("127.0.0.1", port)
    c.loop_write()
    assert until(lambda: c.loop_read() == 0 and c.is_connected(), 10), "connected"
    return c


def test_publishes_go_in_one_write_and_their_acknowledgements_in_one_read(
        broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """paho writes each packet with a send of its own and reads a PUBACK in three recv calls; the unit's client
    writes the QoS 1 publishes queued in a row at once and reads what has arrived at once, in order."""
    calls = {"send": 0, "recv": 0}  # by the unit's client: the collector's plain paho client reads too
    for name in ("send", "recv"):
        real = getattr(mqtt.Client, f"_sock_{name}")
        monkeypatch.setattr(mqtt.Client, f"_sock_{name}",
                            lambda self, arg, _real=real, _n=name: calls.__setitem__(
                                _n, calls[_n] + isinstance(self, mqttc.Client)) or _real(self, arg))
    collector = Collector(broker.port, "bulk/#")
    c = _connected_by_hand(broker.port)
    try:
        calls.update(send=0, recv=0)
        infos = [c.publish(f"bulk/{i}", f"m{i}".encode(), qos=1) for i in range(20)]
        c.loop_write()
        assert calls["send"] == 1, "twenty publishes, one write"
        sock = c.socket()
        assert isinstance(sock, socket.socket)
        assert until(lambda: _readable(sock) and len(sock.recv(65536, socket.MSG_PEEK)) == 20 * 4, 10), \
            "twenty acknowledgements wait in the socket"
        c.loop_read()
        assert all(i.is_published() for i in infos)
        assert calls["recv"] <= 2, f"twenty acknowledgements, {calls['recv']} reads (paho alone: 61)"
        assert collector.wait(lambda ms: len(ms) == 20, 10)
        assert [m[1] for m in collector.messages] == [f"m{i}".encode() for i in range(20)], "in order"
    finally:
        c.disconnect()
        c.loop_write()
        collector.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_stored_messages_go_outside_pahos_books_and_every_acknowledgement_is_taken(
        broker: Broker, protocol: str) -> None:
    """publish_stored() packs the outbox's messages as one write, paho keeping no record of them (the outbox sends
    them again itself): they arrive whole and in order, a retained one retained, and each acknowledgement is
    taken, a v5 one with a reason code (no subscriber) too. Not connected, nothing is sent."""
    settings = BrokerSettings(host="127.0.0.1", port=broker.port, protocol=protocol)
    assert mqttc.make_client(settings, client_id="idle", password="").publish_stored([("stored/x", b"x", False)]) == []
    collector = Collector(broker.port, "stored/heard/#")
    c = _connected_by_hand(broker.port, protocol)
    big = bytes(range(256)) * 800  # 200 kB: a remaining length of three bytes
    try:
        mids = c.publish_stored([("stored/heard/a", b"1", False), ("stored/nobody/b", b"2", False),
                                 ("stored/heard/big", big, False), ("stored/heard/c", b"3" * 300, True)])
        assert len(set(mids)) == 4 and not c._out_messages, "four packet ids, and no record of them in paho"
        acked: list[int] = []
        assert until(lambda: c.loop_write() == 0 and c.loop_read() == 0 and not acked.extend(c.take_acked())
                     and sorted(acked) == sorted(mids), 10), f"acknowledged: {acked} of {mids}"
        assert collector.wait(lambda ms: len(ms) == 3, 10)
        assert [t for t, _, _ in collector.messages] == ["stored/heard/a", "stored/heard/big", "stored/heard/c"]
        assert [p for _, p, _ in collector.messages] == [b"1", big, b"3" * 300]
        late = Collector(broker.port, "stored/heard/c")
        assert late.wait(lambda ms: ms == [("stored/heard/c", b"3" * 300, True)], 10), "kept by the broker as retained"
        late.close()
        assert c.take_acked() == [], "each acknowledgement is taken once"
    finally:
        collector.close()
        c.disconnect()
        c.loop_write()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acknowledgements_of_stored_messages_are_taken_in_one_pass(broker: Broker, monkeypatch: pytest.MonkeyPatch,
                                                                   protocol: str) -> None:
    """What one read brought of the stored messages' PUBACKs is taken in one pass, not a packet at a time through
    paho's reader (4.3 µs each): paho reads the first (its read fills the buffer) and a PUBACK of its own message,
    which the pass stops at and leaves to it. A v5 PUBACK with a reason code (no subscriber) is taken too."""
    reads = {"n": 0}
    real = mqtt.Client._packet_read
    monkeypatch.setattr(mqtt.Client, "_packet_read",
                        lambda self: reads.__setitem__("n", reads["n"] + isinstance(self, mqttc.Client)) or real(self))
    c = _connected_by_hand(broker.port, protocol)
    sock = c.socket()
    assert isinstance(sock, socket.socket)
    try:
        first = c.publish_stored([(f"pass/{i}", b"x", False) for i in range(20)])
        own = c.publish("pass/own", b"y", qos=1)  # paho's, in its books: its PUBACK is paho's to read
        c.loop_write()
        second = c.publish_stored([(f"pass/{i}", b"x", False) for i in range(20, 40)])
        c.loop_write()
        size = 4 if protocol == "3.1.1" else 5  # v5: "no matching subscribers" is a reason code
        assert until(lambda: _readable(sock) and len(sock.recv(65536, socket.MSG_PEEK)) == 41 * size, 10), \
            "forty-one acknowledgements wait in the socket"
        reads["n"] = 0
        c.loop_read()
        assert c.take_acked() == first + second and own.is_published(), "every one taken, in the order sent"
        assert reads["n"] == 2, f"paho read {reads['n']} packets: the first, and its own message's PUBACK"
        assert not c._awaiting and c.loop_read() == 0 and c.take_acked() == [], "each taken once"
    finally:
        c.disconnect()
        c.loop_write()


def test_acknowledgements_split_across_reads_or_malformed_are_left_to_paho() -> None:
    """The pass takes only whole PUBACKs from a packet boundary: one cut by the end of a read is read by paho once
    the rest arrives, whatever byte it was cut at; one whose length is not a PUBACK's is paho's to refuse. No broker
    cuts a packet at a chosen byte: a socket pair carries the bytes one would send."""
    acks = b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in range(1, 6))
    for cut in range(1, len(acks)):
        with _awaiting_on_a_socket_pair({1, 2, 3, 4, 5}) as (c, broker_end):
            broker_end.sendall(acks[:cut])
            assert c.loop_read() == 0
            broker_end.sendall(acks[cut:])
            assert c.loop_read() == 0
            assert c.take_acked() == [1, 2, 3, 4, 5], f"cut at byte {cut}"
    with _awaiting_on_a_socket_pair({1, 2}) as (c, broker_end):
        broker_end.sendall(b"\x40\x02\x00\x01" + b"\x40\x01\x00")  # the second too short for a packet id
        assert c.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL, "refused by paho"
        assert c.take_acked() == [1], "the whole one before it was taken"
        assert c.socket() is None, "paho closed the connection: the unacknowledged go again on the next"


@contextlib.contextmanager
def _awaiting_on_a_socket_pair(mids: set[int]) -> Iterator[tuple[mqttc.Client, socket.socket]]:
    """A connected client awaiting the PUBACKs of stored messages ``mids``, and the broker's end of its socket."""
    c = mqttc.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pair")
    ours, broker_end = socket.socketpair()
    ours.setblocking(False)
    c._sock, c._state = ours, mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[assignment]
    c._awaiting = set(mids)
    try:
        yield c, broker_end
    finally:
        ours.close()
        broker_end.close()


def test_a_command_read_beside_acknowledgements_is_handled_in_the_same_read(broker: Broker) -> None:
    """paho's loop_read stops after as many packets as it has in flight; what the one recv brought beyond them
    (here five commands behind three acknowledgements) is handled before it returns, since a select on the socket
    would never say it is there."""
    c = _connected_by_hand(broker.port)
    heard: list[bytes] = []
    c.on_message = lambda _c, _u, msg: heard.append(bytes(msg.payload))
    subscribed: list[int] = []
    c.on_subscribe = lambda _c, _u, mid, *_: subscribed.append(mid)
    c.subscribe("unit/cmd/#", qos=0)
    c.loop_write()
    assert until(lambda: c.loop_read() == 0 and bool(subscribed), 10), "the SUBACK is read: nothing waits"
    sender = mqttc.make_client(BrokerSettings(host="127.0.0.1", port=broker.port), client_id="s", password="")
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    sock = c.socket()
    assert isinstance(sock, socket.socket)
    try:
        infos = [c.publish("elsewhere", b"x", qos=1) for _ in range(3)]
        c.loop_write()
        for i in range(5):
            sender.publish(f"unit/cmd/{i}", f"c{i}".encode(), qos=0)
        packet = 2 + len("unit/cmd/0") + 2 + 2  # header, topic length, topic, payload
        assert until(lambda: _readable(sock) and len(sock.recv(65536, socket.MSG_PEEK)) == 3 * 4 + 5 * packet, 10), \
            "three acknowledgements and five commands wait in the socket"
        c.loop_read()
        assert heard == [f"c{i}".encode() for i in range(5)] and all(i.is_published() for i in infos)
    finally:
        sender.loop_stop()
        c.disconnect()
        c.loop_write()


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_messages_in_flight_when_the_broker_dies_are_sent_again_from_the_outbox(tmp_path: Path,
                                                                               broker: Broker) -> None:
    """A frozen broker takes the link's publishes and acknowledges none; killed and started again, it gets every
    one of them from the outbox (paho keeps no copy of them to send again), and the outbox drains."""
    collector = Collector(broker.port, "t/u1/result")
    subscribed = time.time()
    saved = broker.folder / "mosquitto.db"  # the subscription must outlive the kill: saved every second
    assert until(lambda: saved.exists() and saved.stat().st_mtime > subscribed, 10), "the broker saved its sessions"
    box = Outbox(tmp_path / "s.db", max_bytes=10_000_000)
    link = _link(tmp_path, box, broker.port, reconnect_min_s=0.2, reconnect_max_s=0.5)
    link.start()
    try:
        assert until(lambda: link.connected, 10)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        for i in range(30):
            link.publish("result", f"r{i}".encode(), qos=1, kind="result")
        assert until(lambda: link.stats.sent >= 30, 10), "sent to the frozen broker"
        assert link.stats.acked == 0 and box.depth()[0] == 30, "none acknowledged, all kept"
        broker.proc.kill()
        broker.proc.wait(10)
        broker.start()
        assert collector.wait(lambda ms: {p for _, p, _ in ms} >= {f"r{i}".encode() for i in range(30)}, 20)
        assert until(lambda: box.depth() == (0, 0), 20), "acknowledged this time, and forgotten"
        assert link.stats.sent >= 60 and link.stats.acked >= 30, "each sent again after the reconnect"
    finally:
        link.stop()
        box.close()
        collector.close()


def test_the_link_comes_back_after_an_outage_and_sends_what_waited(
        tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector(broker.port, "t/u1/result", "t/u1/alert")  # a persistent session: kept over the restart
    box = Outbox(tmp_path / "s.db", max_bytes=10_000_000)
    link = _link(tmp_path, box, broker.port, reconnect_min_s=0.2, reconnect_max_s=0.5)
    link.start()
    try:
        for i in range(50):
            link.publish("result", f"r{i}".encode(), qos=1, kind="result")
        assert collector.wait(lambda ms: len(ms) == 50, 10)
        until(lambda: not box.depth()[0], 10)
        assert box.depth()[0] == 0, "acknowledged, and forgotten"
        broker.stop()
        assert until(lambda: not link.connected, 10)
        for i in range(50, 100):
            link.publish("result", f"r{i}".encode(), qos=1, kind="result")
        link.publish("alert", b"a", qos=1, kind="alert")
        until(lambda: box.depth()[0] >= 51, 10)
        assert box.depth()[0] == 51, "what waits for the broker is in the outbox, not in memory"
        assert until(lambda: link.outage.failures >= 2, 10), "a few reconnect attempts fail meanwhile"
        broker.start()
        assert collector.wait(lambda ms: {p for _, p, _ in ms} >= {f"r{i}".encode() for i in range(100)} | {b"a"}, 20)
        heard = list(dict.fromkeys(collector.on("/result")))  # QoS 1 may deliver twice: the first of each
        assert heard == [f"r{i}".encode() for i in range(100)], "in order"
        until(lambda: not box.depth()[0], 20)
        assert box.depth() == (0, 0)
        assert link.outage.connects == 2 and link.outage.failures >= 2
    finally:
        link.stop()
        box.close()
        collector.close()
    said = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(said) == 1, f"an outage is one line, not one per attempt: {said}"
