"""The SQLite stores a unit and the relay keep for months, across upgrades: today's files (written before schemas had
versions) are taken up as they are, with what they hold; a file a newer version wrote is refused in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from contract.sqlite import SchemaError, version
from edge.history import SCHEMA as HISTORY
from edge.history import History
from edge.mqtt.outbox import SCHEMA as OUTBOX
from edge.mqtt.outbox import Outbox
from harness import REPO
from relay.queue import SCHEMA as RELAY
from relay.queue import Store


def _unversioned(path: Path, *steps: tuple[str, ...]) -> sqlite3.Connection:
    """A file as the product wrote it before versions: the same statements, no version kept."""
    db = sqlite3.connect(path, isolation_level=None)
    for step in steps:
        for statement in step:
            db.execute(statement)
    return db


def test_todays_files_are_taken_up_with_what_they_hold(tmp_path: Path) -> None:
    state = tmp_path / "state.db"  # the unit's outbox and history share it; the outbox from before parts were kept
    db = _unversioned(state, OUTBOX[0], *HISTORY)
    db.execute("INSERT INTO outbox (topic, payload, qos, retain, kind, priority, created, size) "
               "VALUES ('defect-edge/u1/alert', x'7b7d', 1, 0, 'alert', 5, 1.0, 2)")
    db.execute("INSERT INTO results VALUES ('u1-1-000000001', 1.0, 'good', 0.1, 0.9, 0, 'm', '{}')")
    db.close()
    outbox = Outbox(state, max_bytes=1 << 20)
    history = History(state)
    [kept] = outbox.pending()
    assert (kept.topic, kept.payload, kept.kind) == ("defect-edge/u1/alert", b"{}", "alert")
    assert outbox.depth() == (1, 2) and history.count("results") == 1
    outbox.open_part(1, "u1-1-000000001", "modbus", 1.0)  # step 2 added the parts table
    assert [u.part_id for u in outbox.unsettled()] == ["u1-1-000000001"]
    with sqlite3.connect(state) as check:
        assert (version(check, "outbox"), version(check, "history")) == (len(OUTBOX), len(HISTORY)) == (2, 1)
    Outbox(state, max_bytes=1 << 20)  # again: nothing to do, nothing lost
    assert len(Outbox(state, max_bytes=1 << 20).pending()) == 1

    relay = tmp_path / "relay.db"
    db = _unversioned(relay, RELAY[0])  # the relay before versions were kept: its first step
    db.execute("INSERT INTO alerts (dedup_key, device_id, kind, frame_id, payload, received) "
               "VALUES ('u1:defect:1', 'u1', 'defect', 'u1-1-000000001', '{}', 1.0)")
    db.close()
    assert [a["dedup_key"] for a in Store(relay).new_alerts()] == ["u1:defect:1"]


def test_a_file_a_newer_version_wrote_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from edge.cli import main as edge_main
    from relay.cli import main as relay_main

    state = tmp_path / "unit"
    Outbox(state / "state.db", max_bytes=1 << 20)
    with sqlite3.connect(state / "state.db") as db:
        db.execute("UPDATE schema_versions SET version = 7 WHERE store = 'outbox'")
    with pytest.raises(SchemaError, match="outbox schema is at version 7, written by a newer version"):
        Outbox(state / "state.db", max_bytes=1 << 20)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[device]\nid = "u1"\n[camera]\nsource = "{REPO / "demo"}"\n[model]\nname = "mobilenetv2"\n'
                   f'models_dir = "{REPO / "models"}"\n[state]\ndir = "{state}"\n')
    assert edge_main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this one knows 2" in err and "Traceback" not in err, err

    Store(tmp_path / "relay" / "relay.db")
    with sqlite3.connect(tmp_path / "relay" / "relay.db") as db:
        db.execute("UPDATE schema_versions SET version = 3 WHERE store = 'relay'")
    relay_cfg = tmp_path / "relay.toml"
    relay_cfg.write_text(f'[state]\ndir = "{tmp_path / "relay"}"\n[[routes]]\ndevices = ["*"]\n'
                         'recipients = ["lead@plant.example"]\n')
    assert relay_main(["run", "--config", str(relay_cfg)]) == 2
    err = capsys.readouterr().err
    assert "relay schema is at version 3" in err and "Traceback" not in err, err
