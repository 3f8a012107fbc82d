"""The store-and-forward outbox: durable, ordered, bounded, shedding the least valuable first and counting it."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest

from edge import config
from edge.mqtt import client
from edge.mqtt.client import MqttLink
from edge.mqtt.outbox import Outbox, Outgoing


def test_survives_reopen_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=10_000)
    ids = [box.put(f"t/{i}", b"x" * 10, kind="alert") for i in range(5)]
    box.ack([ids[1]])
    box.close()
    again = Outbox(tmp_path / "s.db", max_bytes=10_000)
    assert [m.topic for m in again.pending()] == ["t/0", "t/2", "t/3", "t/4"]
    assert [m.topic for m in again.pending(after_id=ids[2], limit=1)] == ["t/3"]
    assert again.depth() == (4, 4 * (10 + 3))


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


def _link(tmp_path: Path, box: Outbox) -> MqttLink:
    with socket.socket() as s:  # a port nothing listens on: storing does not wait for a broker
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.parse({"device": {"id": "u1"}, "camera": {"source": "0"},
                        "mqtt": {"host": "127.0.0.1", "port": port}, "state": {"dir": str(tmp_path)}},
                       check_files=False)
    return MqttLink(cfg, box, on_command=lambda *_: None, status=lambda: b"{}")


def test_results_are_stored_in_batches_in_the_order_published(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=1_000_000)
    box._db.execute("PRAGMA busy_timeout = 50")  # a locked database fails in 50 ms, not the default 30 s
    link = _link(tmp_path, box)
    link.publish("result", b"r1", qos=1, kind="result")
    link.publish("result", b"r2", qos=1, kind="result")
    assert box.depth()[0] == 0, "results wait for the drainer"
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

    link.start()  # the drainer stores what is held, without a broker
    link.publish("result", b"r4", qos=1, kind="result")
    deadline = time.monotonic() + 10
    while box.depth()[0] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
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
