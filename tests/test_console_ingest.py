"""The historian against a real Mosquitto: what units say is stored, hostile messages are counted and dropped, and
a database that is locked for a while loses nothing (the broker keeps what was not acknowledged)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, func, select

from console import config
from console.ingest import Historian
from console.store import db, queries, writer
from console.store import schema as s
from contract import payloads
from harness.broker import Broker
from harness.units import SimUnit
from harness.wait import until


def publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def start(tmp: Path, broker: Broker) -> tuple[Historian, Engine]:
    cfg = config.parse({"mqtt": {"host": "127.0.0.1", "port": broker.port}, "state": {"dir": str(tmp)},
                        "database": {"batch_wait_ms": 20}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    h = Historian(cfg, engine)
    h.start()
    assert until(lambda: h.state == "ok"), "connected"
    return h, engine


def results(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.results)).scalar_one())


def test_hostile_messages_are_counted_and_dropped(tmp_path: Path, broker: Broker) -> None:
    h, engine = start(tmp_path, broker)
    pub = publisher(broker.port)
    unit = SimUnit(pub, "line3-a")
    frame = unit.result(0.9, qos=1)
    unit.alert(frame)
    base = "defect-edge/line3-a"
    hostile = [
        (f"{base}/result", b"{not json"), (f"{base}/result", b'{"schema": 1}'),
        (f"{base}/alert", json.dumps({"schema": 1, "device_id": "line3-b", "kind": "defect", "frame_id": None,
                                      "dedup_key": "k"}).encode()),
        ("defect-edge/bad id/result", b"{}"), (f"{base}/snapshot/x", b"GIF89a"),
        (f"{base}/snapshot/big", b"\xff\xd8" + bytes(50 * 1024 * 1024)),  # a 50 MB "snapshot"
        (f"{base}/available", b"maybe"), (f"{base}/metrics", b"[" * 100_000),
    ]
    for topic, payload in hostile:
        pub.publish(topic, payload, qos=1).wait_for_publish(30)
    assert until(lambda: sum(v for k, v in h.stats.items() if k.startswith("rejected_")) >= 7, 30), h.stats
    assert until(lambda: writer.counters(engine).get("received", 0) >= 11, 10), writer.counters(engine)
    c = writer.counters(engine)
    assert c["rejected_not_json"] == 1 and c["rejected_bad_field"] == 2 and c["rejected_device_mismatch"] == 1
    assert c["rejected_not_jpeg"] == 1 and c["rejected_oversize"] == 2
    assert results(engine) == 1 and queries.alerts(engine)[1] == 1
    assert until(lambda: queries.alerts(engine)[0][0]["heatmap"] is not None)
    assert sum(1 for _ in (tmp_path / "images").rglob("*.jpg")) == 2, "only the two real JPEGs are on disk"
    h.stop()
    pub.loop_stop()


def test_a_locked_database_is_reported_and_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    h, engine = start(tmp_path, broker)
    pub = publisher(broker.port)
    unit = SimUnit(pub, "line3-a")
    for _ in range(20):
        unit.result(0.2, qos=1)
    assert until(lambda: results(engine) == 20)
    lock = sqlite3.connect(tmp_path / "console.db", timeout=1)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        for _ in range(200):
            unit.result(0.8, qos=1)
        assert until(lambda: h.state.startswith("database_error"), 60), h.state
        assert "locked" in h.state
    finally:
        lock.rollback()
        lock.close()
    assert until(lambda: results(engine) == 220, 60), results(engine)
    assert until(lambda: h.state == "ok", 10), "the state clears once writes go through"  # set just after commit
    with engine.connect() as conn:
        frames = conn.execute(select(func.sum(s.minutes.c.frames))).scalar_one()
    assert frames == 220, "each result counted once in the aggregates"
    h.stop()
    pub.loop_stop()


def _shipped_queueing() -> str:
    """The shipped broker configuration's lines for a console that is away (systemd/mosquitto/defect-edge.conf)."""
    from harness import REPO

    text = (REPO / "systemd" / "mosquitto" / "defect-edge.conf").read_text()
    block = text.split("# -- What the console's historian needs while it is away", 1)[1].split("\n# --\n", 1)[0]
    return "\n".join(line for line in block.splitlines()[1:] if line and not line.startswith("#")) + "\n"


def _stored_after_an_absence(tmp: Path, extra: str) -> int:
    """Results a console stores of 10 published at QoS 0 while it was away, on a broker with ``extra`` lines."""
    broker = Broker(tmp / "broker", extra="allow_anonymous true\n" + extra).start()
    try:
        h, engine = start(tmp, broker)
        h.stop()  # the console restarts
        pub = publisher(broker.port)
        unit = SimUnit(pub, "line3-a")
        for _ in range(10):
            unit.result(0.3, qos=0)
        pub.publish("defect-edge/line3-a/available", b"online", qos=1).wait_for_publish(10)  # after them, queued
        pub.loop_stop()
        h, engine = start(tmp, broker)
        assert until(lambda: writer.counters(engine).get("received", 0) >= 1, 20)
        until(lambda: results(engine) == 10, 5)  # the same wait either way: the store catches up
        h.stop()
        return results(engine)
    finally:
        broker.stop()


def test_results_published_while_the_console_is_away_are_kept_with_the_shipped_broker(tmp_path: Path) -> None:
    """Before: with result_qos = 0 (the units' default), 10 results published while the console was down: 0 stored,
    although docs/console.md promised the broker kept them. A broker without the shipped lines still loses them."""
    stored = {name: _stored_after_an_absence(tmp_path / name, extra)
              for name, extra in (("without", ""), ("shipped", _shipped_queueing()))}
    assert stored == {"without": 0, "shipped": 10}, stored


def test_parts_are_ingested_once_and_counted_in_parts(tmp_path: Path, broker: Broker) -> None:
    """Before, the console did not subscribe to part messages: a line where 4 of 16 parts were NG read "20 %
    of 120 frames". A part redelivered (QoS 1 is at least once) is stored once."""
    h, engine = start(tmp_path, broker)
    pub = publisher(broker.port)
    unit = SimUnit(pub, "line3-a")
    sent = [unit.part(v) for v in ["ok"] * 12 + ["ng"] * 4]
    pub.publish("defect-edge/line3-a/part", payloads.dumps(sent[-1]), qos=1).wait_for_publish(10)  # again
    assert until(lambda: writer.counters(engine).get("received", 0) >= 17, 20)
    assert until(lambda: (queries.fleet(engine)[0]["parts_hour"] or {}).get("parts") == 16, 10)
    c = queries.fleet(engine)[0]["parts_hour"]
    assert c["ng"] == 4 and c["ng_rate"] == 0.25
    h.stop()
    pub.loop_stop()
