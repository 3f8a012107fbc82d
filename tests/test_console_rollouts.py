"""Rollouts in waves, driven in-process with the store's own clock: the canary first, promotion by the gates, the
next wave only when the last is promoted and done being watched, an abort the moment a unit fails, nothing sent
twice; and the pages that start, show and abort them, with their roles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from console import auth, config
from console.app import Services, create_app
from console.live import LiveHub
from console.store import db, rollouts, writer
from contract import payloads

PW = "a long password"
Sent = list[tuple[str, str, dict[str, Any], str]]


def status(engine: Engine, device: str, release: dict[str, Any] | None) -> None:
    st = payloads.Status(device_id=device, software_version="t", started_at="2026-12-05T06:00:00Z", uptime_s=1,
                         mode="continuous", model=payloads.StatusModel(name="casting", quantization="int8",
                                                                        sha256="a" * 64),
                         camera=payloads.CameraState(state="streaming"), gradcam={"state": "idle"}, release=release)
    writer.write(engine, [writer.Item("status", device, 1.0, raw=payloads.dumps(st))])


def shadow(compared: int, agreement: float = 1.0, p95: float = 4.0) -> dict[str, Any]:
    return {"compared": compared, "agreement": agreement, "errors": 0, "dp": {"max_abs": 0.01}, "disagreements": [],
            "inference_ms": {"p50": p95 / 2, "p95": p95}}


@pytest.fixture
def world(tmp_path: Path) -> tuple[Engine, Sent, config.ConsoleConfig]:
    cfg = config.parse({"state": {"dir": str(tmp_path)}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    for i in range(1, 7):
        status(engine, f"u{i}", None)
    status(engine, "other", None)
    return engine, [], cfg


def test_waves_go_canary_first_promote_by_the_gates_and_stop_at_a_failure(
        world: tuple[Engine, Sent, config.ConsoleConfig]) -> None:
    engine, sent, _ = world
    t0 = 1000.0

    def send(device: str, name: str, args: dict[str, Any], who: str) -> None:
        sent.append((device, name, args, who))

    rid = rollouts.create(engine, model="casting", version=None, units="u*", canary=1, factor=2.0, auto_promote=True,
                          min_compared=10, min_agreement=0.95, user="eng", now=t0)
    assert [u["wave"] for u in rollouts.get(engine, rid)["members"]] == [0, 1, 1, 2, 2, 2], "1, then 2, then 3"
    rollouts.step(engine, send, t0 + 1)
    rollouts.step(engine, send, t0 + 2)
    assert sent == [("u1", "release", {"name": "casting"}, f"rollout {rid} (eng)")], "the canary, once"
    status(engine, "u1", {"name": "casting", "version": 4, "state": "shadow", "since": t0 - 50, "shadow": shadow(99)})
    rollouts.step(engine, send, t0 + 3)
    assert len(sent) == 1, "a status from before the rollout is not its answer"
    status(engine, "u1", {"name": "casting", "version": 4, "state": "shadow", "since": t0 + 3, "shadow": shadow(5)})
    rollouts.step(engine, send, t0 + 4)
    assert len(sent) == 1, "the shadow has not compared enough"
    status(engine, "u1", {"name": "casting", "version": 4, "state": "shadow", "since": t0 + 3,
                          "shadow": shadow(40, 0.9)})
    rollouts.step(engine, send, t0 + 5)
    assert len(sent) == 1, "agreement below the gate"
    status(engine, "u1", {"name": "casting", "version": 4, "state": "shadow", "since": t0 + 3, "shadow": shadow(60)})
    rollouts.step(engine, send, t0 + 6)
    rollouts.step(engine, send, t0 + 7)
    assert sent[1:] == [("u1", "promote", {}, f"rollout {rid} (eng)")], "promoted once"
    status(engine, "u1", {"name": "casting", "version": 4, "state": "promoted", "since": t0 + 8, "watching": 12})
    rollouts.step(engine, send, t0 + 9)
    assert len(sent) == 2 and rollouts.get(engine, rid)["wave"] == 0, "still watched: the next wave waits"
    status(engine, "u1", {"name": "casting", "version": 4, "state": "promoted", "since": t0 + 8})
    rollouts.step(engine, send, t0 + 10)
    rollouts.step(engine, send, t0 + 11)
    assert sorted(d for d, n, _, _ in sent[2:]) == ["u2", "u3"] and {n for _, n, _, _ in sent[2:]} == {"release"}
    status(engine, "u2", {"name": "casting", "version": 4, "state": "shadow", "since": t0 + 12, "shadow": shadow(3)})
    status(engine, "u3", {"name": "casting", "version": 4, "state": "failed", "since": t0 + 12,
                          "reason": "mobilenetv2 on ai_edge_litert: FAILED: parity"})
    rollouts.step(engine, send, t0 + 13)
    r = rollouts.get(engine, rid)
    assert r["state"] == "aborted" and r["reason"] == "u3: failed: mobilenetv2 on ai_edge_litert: FAILED: parity"
    rollouts.step(engine, send, t0 + 14)
    assert len(sent) == 4 and not any(d in ("u4", "u5", "u6", "other") for d, *_ in sent), "no further wave"
    units = {u["device_id"]: u for u in r["members"]}
    assert units["u1"]["state"] == "promoted" and units["u3"]["state"] == "failed"
    assert units["u4"]["state"] == "waiting"


def test_an_engineers_promotion_finishes_a_rollout_and_a_later_rollback_aborts_it(
        world: tuple[Engine, Sent, config.ConsoleConfig]) -> None:
    engine, sent, _ = world

    def send(device: str, name: str, args: dict[str, Any], who: str) -> None:
        sent.append((device, name, args, who))

    rid = rollouts.create(engine, model="casting", version=4, units="u1,u2", canary=1, factor=1.0,
                          auto_promote=False, min_compared=10, min_agreement=0.95, user="eng", now=10.0)
    rollouts.step(engine, send, 11.0)
    assert sent[0][2] == {"name": "casting", "version": 4}
    status(engine, "u1", {"name": "casting", "version": 4, "state": "shadow", "since": 12.0, "shadow": shadow(500)})
    rollouts.step(engine, send, 13.0)
    assert len(sent) == 1, "an engineer promotes, not the gates"
    for device in ("u1", "u2"):
        status(engine, device, {"name": "casting", "version": 4, "state": "promoted", "since": 14.0})
        rollouts.step(engine, send, 15.0)
        rollouts.step(engine, send, 16.0)
    assert rollouts.get(engine, rid)["state"] == "done" and [d for d, *_ in sent] == ["u1", "u2"]
    rid2 = rollouts.create(engine, model="casting", version=5, units="u1", canary=1, factor=1.0,
                           auto_promote=True, min_compared=1, min_agreement=0.0, user="eng", now=20.0)
    rollouts.step(engine, send, 21.0)
    status(engine, "u1", {"name": "casting", "version": 4, "state": "promoted", "since": 22.0})
    rollouts.step(engine, send, 23.0)
    assert rollouts.get(engine, rid2)["state"] == "running", "another version's state is not this rollout's"
    with pytest.raises(ValueError, match="no known unit"):
        rollouts.create(engine, model="casting", version=None, units="line9-*", canary=1, factor=2.0,
                        auto_promote=True, min_compared=1, min_agreement=0.9, user="eng")


def test_the_pages_start_show_and_abort_a_rollout_for_engineers_only(
        world: tuple[Engine, Sent, config.ConsoleConfig]) -> None:
    engine, _, cfg = world
    for name, role in (("eng", "engineer"), ("view", "viewer")):
        auth.add_user(engine, name, PW, role)
    published: list[tuple[str, bytes]] = []
    client = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: published.append((t, p)))))

    def login(name: str) -> str:
        client.post("/login", data={"name": name, "password": PW})
        m = re.search(r'name="csrf" value="([^"]+)"', client.get("/rollouts").text)
        assert m
        return m.group(1)

    token = login("view")
    assert "Start</button>" not in client.get("/rollouts").text
    assert client.post("/rollouts", data={"csrf": token, "model": "casting", "units": "u*"}).status_code == 403
    token = login("eng")
    r = client.post("/rollouts", data={"csrf": token, "model": "../x", "units": "u*"})
    assert r.status_code == 400 and "model:" in r.text
    r = client.post("/rollouts", data={"csrf": token, "model": "casting", "units": "u*", "canary": "0"})
    assert r.status_code == 400 and "canary: 0 is not between 1 and 1000" in r.text
    r = client.post("/rollouts", data={"csrf": token, "model": "casting", "units": "u1,u2,u3", "canary": "1",
                                       "factor": "2", "auto_promote": "1"}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(r.headers["location"]).text
    assert "Rollout of casting (newest)" in page and "wave 1 of 2" in page and 'data-unit="u3"' in page
    assert "(canary)" in page and "Abort" in page
    rid = r.headers["location"].rsplit("/", 1)[1]
    client.post(f"/rollouts/{rid}/abort", data={"csrf": token})
    page = client.get(f"/rollouts/{rid}").text
    assert 'id="rollout-state">aborted<' in page and "aborted by eng" in page and "Abort (no" not in page
    assert "aborted by eng" in client.get("/rollouts").text


def test_the_reviewed_truth_of_the_disagreements_gates_a_promotion(
        world: tuple[Engine, Sent, config.ConsoleConfig]) -> None:
    """The candidate is promoted only when enough of the frames where it called otherwise than the active model were
    reviewed, and it was right on at least as many of them; disagreements a unit stopped listing still count."""
    from console.store import schema as s

    engine, sent, _ = world

    def send(device: str, name: str, args: dict[str, Any], who: str) -> None:
        sent.append((device, name, args, who))

    def reviewed(frame: str, predicted: str, truth: str) -> None:
        with engine.begin() as conn:
            conn.execute(s.reviews.insert().values(device_id="u1", frame_id=frame, verdict="x", truth=truth,
                                                   predicted=predicted, note="", user="lead", ts=50.0))

    rid = rollouts.create(engine, model="casting", version=None, units="u1", canary=1, factor=1.0, auto_promote=True,
                          min_compared=1, min_agreement=0.0, min_reviewed=2, user="eng", now=10.0)
    rollouts.step(engine, send, 11.0)
    first = {**shadow(50, 0.9), "disagreements": ["f1", "f2"]}
    status(engine, "u1", {"name": "casting", "state": "shadow", "since": 12.0, "shadow": first})
    rollouts.step(engine, send, 13.0)
    later = {**shadow(80, 0.9), "disagreements": ["f3"]}  # f1 and f2 have rotated out of the unit's list
    status(engine, "u1", {"name": "casting", "state": "shadow", "since": 12.0, "shadow": later})
    rollouts.step(engine, send, 14.0)
    assert [n for _, n, _, _ in sent] == ["release"], "no review yet"
    reviewed("f1", "good", "good")  # the active model was right
    rollouts.step(engine, send, 15.0)
    assert [n for _, n, _, _ in sent] == ["release"], "one reviewed of the two asked"
    reviewed("f3", "good", "good")
    rollouts.step(engine, send, 16.0)
    assert [n for _, n, _, _ in sent] == ["release"], "the active model right on both: the candidate is not better"
    reviewed("f2", "good", "defective")  # the candidate was right
    with engine.begin() as conn:
        conn.execute(s.reviews.delete().where(s.reviews.c.frame_id == "f3"))
    rollouts.step(engine, send, 17.0)
    assert [n for _, n, _, _ in sent] == ["release", "promote"]
    unit = rollouts.get(engine, rid)["members"][0]
    assert unit["shadow"]["disagreements"] == ["f1", "f2", "f3"]
    assert unit["truth"] == {"reviewed": 2, "active_right": 1, "candidate_right": 1}


def test_a_candidate_slower_than_the_bound_is_not_promoted(world: tuple[Engine, Sent, config.ConsoleConfig]) -> None:
    engine, sent, _ = world

    def send(device: str, name: str, args: dict[str, Any], who: str) -> None:
        sent.append((device, name, args, who))

    rollouts.create(engine, model="casting", version=None, units="u1", canary=1, factor=1.0, auto_promote=True,
                    min_compared=1, min_agreement=0.0, max_inference_ms=8.0, user="eng", now=10.0)
    rollouts.step(engine, send, 11.0)
    status(engine, "u1", {"name": "casting", "state": "shadow", "since": 12.0, "shadow": shadow(50, 1.0, 9.5)})
    rollouts.step(engine, send, 13.0)
    assert [n for _, n, _, _ in sent] == ["release"], "9.5 ms at p95 is beyond the 8 ms bound"
    status(engine, "u1", {"name": "casting", "state": "shadow", "since": 12.0, "shadow": shadow(60, 1.0, 7.9)})
    rollouts.step(engine, send, 14.0)
    assert [n for _, n, _, _ in sent] == ["release", "promote"]


def test_the_command_line_starts_lists_and_aborts_a_rollout(world: tuple[Engine, Sent, config.ConsoleConfig],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from console.cli import main

    engine, _, cfg = world
    toml = tmp_path / "console.toml"
    toml.write_text(f'[state]\ndir = "{cfg.state.dir}"\n')
    assert main(["--config", str(toml), "rollout", "start", "--model", "casting", "--units", "u1,u2,u3",
                 "--by", "anna"]) == 0
    out = capsys.readouterr().out
    assert "to 3 units in 2 waves" in out
    rid = out.split()[1].rstrip(":")
    assert rollouts.get(engine, rid)["created_by"] == "anna (cli)"
    assert main(["--config", str(toml), "rollout", "list"]) == 0
    assert f"{rid}  running" in capsys.readouterr().out
    assert main(["--config", str(toml), "rollout", "start", "--model", "casting", "--units", "nope*"]) == 2
    assert "no known unit matches" in capsys.readouterr().err
    assert main(["--config", str(toml), "rollout", "abort", rid]) == 0
    assert rollouts.get(engine, rid)["state"] == "aborted"
    assert main(["--config", str(toml), "rollout", "abort", rid]) == 2
