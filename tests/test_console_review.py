"""The review queue in-process: verdicts by item and in bulk, the count that falls, the feedback that goes to the
unit, reviewed images kept, and the export in the layout the converter reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from console import auth, config, images
from console.app import Services, create_app
from console.cli import main as console_main
from console.live import LiveHub
from console.store import db, review, writer
from console.store import schema as s
from contract import payloads
from converter.dataset import open_folder
from harness.units import jpeg

PW = "a long password"


@pytest.fixture
def world(tmp_path: Path) -> tuple[TestClient, Engine, list[tuple[str, bytes]], config.ConsoleConfig]:
    cfg = config.parse({"state": {"dir": str(tmp_path / "state")}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    auth.add_user(engine, "op", PW, "operator")
    auth.add_user(engine, "view", PW, "viewer")
    items = []
    for i in range(10):
        frame = f"u1-1-{i:09d}"
        p = 0.9 if i % 2 == 0 else 0.55
        a = payloads.Alert(device_id="u1", kind="defect" if p > 0.6 else "low_confidence", frame_id=frame,
                           dedup_key=f"u1:x:{i}", label="defective", p_defect=p, model="mobilenetv2",
                           ts=f"2026-11-28T03:{i:02d}:00.000Z")
        sha = images.store(cfg.images_dir, jpeg(i))
        items += [writer.Item("alert", "u1", 1.0, message=a),
                  writer.Item("snapshot", "u1", 1.0, key=frame, sha256=sha, size=len(jpeg(i)))]
    writer.write(engine, items)
    sent: list[tuple[str, bytes]] = []
    client = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: sent.append((t, p)))))
    return client, engine, sent, cfg


def login(client: TestClient, name: str) -> str:
    client.post("/login", data={"name": name, "password": PW})
    m = re.search(r'name="csrf" value="([^"]+)"', client.get("/review").text)
    assert m
    return m.group(1)


def waiting(client: TestClient) -> int:
    return int(re.search(r'id="waiting">(\d+) waiting', client.get("/review").text).group(1))  # type: ignore[union-attr]


def test_verdicts_are_stored_count_down_and_reach_the_unit(world: tuple[TestClient, Engine, list[tuple[str, bytes]],
                                                                         config.ConsoleConfig]) -> None:
    client, engine, sent, _ = world
    token = login(client, "op")
    assert waiting(client) == 10
    page = client.get("/review").text
    assert 'data-frame="u1-1-000000000"' in page, "oldest first"
    for verdict, frame in (("right", 0), ("wrong_good", 1), ("unsure", 2)):
        r = client.post("/review", data={"csrf": token, "device_id": "u1", "frame_id": f"u1-1-{frame:09d}",
                                         "verdict": verdict, "note": "<b>burr</b>"}, follow_redirects=False)
        assert r.status_code == 303
    assert waiting(client) == 7
    client.post("/review", data={"csrf": token, "verdict": "wrong_defective",
                                 "items": ["u1|u1-1-000000003", "u1|u1-1-000000004"]})
    assert waiting(client) == 5
    with engine.connect() as conn:
        rows = {r.frame_id: (r.verdict, r.truth, r.user) for r in conn.execute(select(s.reviews))}
        kept = {r.sha256 for r in conn.execute(select(s.images.c.sha256).where(s.images.c.reviewed.is_(True)))}
    assert rows["u1-1-000000000"] == ("right", "defective", "op")
    assert rows["u1-1-000000001"] == ("wrong_good", "good", "op") and rows["u1-1-000000002"][1] is None
    assert len(kept) == 5, "reviewed images are kept longest"
    feedback = [json.loads(p) for t, p in sent if t == "defect-edge/u1/cmd/feedback"]
    assert [(f["frame_id"][-1], f["label"]) for f in feedback] == [("0", "defective"), ("1", "good"),
                                                                   ("3", "defective"), ("4", "defective")]
    assert all(f["request_id"].startswith("console-") for f in feedback), "unsure sends nothing"
    reviewed = client.get("/review?state=reviewed").text
    assert "reviewed <strong>wrong_defective</strong> by op" in reviewed


def test_the_latest_reviewed_comes_first_though_its_alerts_share_a_millisecond(
        world: tuple[TestClient, Engine, list[tuple[str, bytes]], config.ConsoleConfig]) -> None:
    client, engine, _, cfg = world
    frames = [f"u2-1-{i:09d}" for i in range(3)]
    items = []
    for i, frame in enumerate(frames):  # a unit's alerts in one burst carry the same ts
        a = payloads.Alert(device_id="u2", kind="defect", frame_id=frame, dedup_key=f"u2:defect:{i}",
                           label="defective", p_defect=0.9, model="mobilenetv2", ts="2026-11-28T04:00:00.000Z")
        sha = images.store(cfg.images_dir, jpeg(20 + i))
        items += [writer.Item("alert", "u2", 1.0, message=a),
                  writer.Item("snapshot", "u2", 1.0, key=frame, sha256=sha, size=10)]
    writer.write(engine, items)
    waiting_order = [r["frame_id"] for r in review.queue(engine, device_id="u2")[0]]
    assert waiting_order == frames
    for frame, verdict in zip(frames, ("right", "wrong_good", "wrong_defective"), strict=True):
        review.record(engine, device_id="u2", frame_id=frame, verdict=verdict, note="", user="op", request_id=None)
    rows, total = review.queue(engine, device_id="u2", state="reviewed")
    assert total == 3 and [r["frame_id"] for r in rows] == frames[::-1], "what was just decided, first"
    login(client, "op")
    page = client.get("/review?state=reviewed&unit=u2").text
    assert 'data-frame="u2-1-000000002"' in page and "reviewed <strong>wrong_defective</strong> by op" in page


def test_sampled_calls_join_the_queue_with_their_call(world: tuple[TestClient, Engine, list[tuple[str, bytes]],
                                                                    config.ConsoleConfig]) -> None:
    client, engine, sent, cfg = world
    r = payloads.Result(device_id="u1", ts="2026-11-28T02:00:00.000Z", frame_id="u1-1-000000099", label="good",
                        defective=False, p_defect=0.04, confidence=0.96, threshold=0.5, low_confidence=False,
                        model=payloads.ModelRef(name="mobilenetv2", quantization="int8", sha256="7" * 64),
                        timings_ms={})
    sha = images.store(cfg.images_dir, jpeg(99))
    writer.write(engine, [writer.Item("result", "u1", 1.0, message=r),
                          writer.Item("snapshot", "u1", 1.0, key="u1-1-000000099", sha256=sha, size=10)])
    token = login(client, "op")
    assert waiting(client) == 11
    page = client.get("/review?kind=sample").text
    assert 'data-frame="u1-1-000000099"' in page and "called it <strong class=\"good\">good" in page
    client.post("/review", data={"csrf": token, "device_id": "u1", "frame_id": "u1-1-000000099",
                                 "verdict": "wrong_defective"})
    assert waiting(client) == 10
    feedback = json.loads(sent[-1][1])
    assert sent[-1][0] == "defect-edge/u1/cmd/feedback" and feedback["label"] == "defective", "a silent miss, found"
    rows, _ = review.queue(engine, frame_id="u1-1-000000099", state="reviewed")
    assert rows[0]["truth"] == "defective" and rows[0]["kind"] == "sample"


def test_a_sampled_ok_part_is_reviewed_as_a_part_and_counts_in_the_escape_rate(
        world: tuple[TestClient, Engine, list[tuple[str, bytes]], config.ConsoleConfig]) -> None:
    """A unit judging parts samples OK parts by their deciding frame, and may send no per-frame result: the item
    takes its call from the part, and its review is one of the escape rate's."""
    from console.store import reports

    client, engine, _, cfg = world
    frame = "u1-1-000000123"
    part = payloads.Part(device_id="u1", ts="2026-11-28T02:00:00.000Z", part_id="u1-1-000000007", seq=7,
                         trigger="presence", verdict="ok", aggregate="max",
                         frames=[payloads.PartFrame(frame_id=frame, p_defect=0.07)], frame_id=frame, label="good",
                         defective=False, p_defect=0.07, confidence=0.93, threshold=0.5, low_confidence=False,
                         model=payloads.ModelRef(name="casting", quantization="int8", sha256="8" * 64),
                         timings_ms={})
    sha = images.store(cfg.images_dir, jpeg(123))
    writer.write(engine, [writer.Item("part", "u1", 1.0, message=part),
                          writer.Item("snapshot", "u1", 1.0, key=frame, sha256=sha, size=10)])
    token = login(client, "op")
    page = client.get("/review?kind=sample&model=casting").text
    assert f'data-frame="{frame}"' in page and "called it <strong class=\"good\">good" in page, page
    client.post("/review", data={"csrf": token, "device_id": "u1", "frame_id": frame, "verdict": "wrong_defective"})
    [row] = [q for q in reports.quality(engine) if q["model"] == "casting"]
    assert (row["ok_reviewed"], row["escapes"], row["ng_reviewed"]) == (1, 1, 0), row


def test_a_viewer_sees_the_queue_but_cannot_review(world: tuple[TestClient, Engine, list[tuple[str, bytes]],
                                                                 config.ConsoleConfig]) -> None:
    client, _, sent, _ = world
    token = login(client, "view")
    assert "Reviewing needs the operator role" in client.get("/review").text
    r = client.post("/review", data={"csrf": token, "device_id": "u1", "frame_id": "u1-1-000000000",
                                     "verdict": "right"})
    assert r.status_code == 403 and sent == []


def test_export_writes_the_layout_the_converter_reads(world: tuple[TestClient, Engine, list[tuple[str, bytes]],
                                                                    config.ConsoleConfig], tmp_path: Path) -> None:
    client, engine, _, cfg = world
    for i in range(10):
        review.record(engine, device_id="u1", frame_id=f"u1-1-{i:09d}", verdict="right" if i % 3 else "wrong_good",
                      note="", user="op", request_id=None)
    toml = tmp_path / "console.toml"
    toml.write_text(f'[state]\ndir = "{cfg.state.dir}"\n')
    out = tmp_path / "reviewed"
    assert console_main(["--config", str(toml), "export", str(out), "--holdout", "0.3"]) == 0
    train, held = open_folder(out / "train"), open_folder(out / "eval")
    assert len(train.paths) == 7 and len(held.paths) == 3, "the newest 30 % held out"
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == ("split,file,frame_id,unit,model,model_sha256,p_defect,predicted,truth,verdict,reviewer,"
                           "reviewed_at,part_id,part_verdict") and len(manifest) == 11
    token = login(client, "op")
    assert token
    r = client.get("/review/export.zip")
    assert r.status_code == 200 and r.content[:2] == b"PK"


@pytest.mark.tensorflow
def test_an_export_round_trips_into_train_and_eval(tmp_path: Path) -> None:
    """Reviewed synthetic parts, exported, train a model with defect-convert, which converts against the held-out
    share: the export is a data set the converter takes as it is."""
    import subprocess
    import sys

    import cv2

    from converter import synth

    cfg = config.parse({"state": {"dir": str(tmp_path / "state")}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    items = []
    for i in range(40):
        part = synth.sample(8, i, size=128)
        frame = f"u1-1-{i:09d}"
        data = cv2.imencode(".jpg", part.image[:, :, ::-1])[1].tobytes()
        sha = images.store(cfg.images_dir, data)
        a = payloads.Alert(device_id="u1", kind="defect", frame_id=frame, dedup_key=f"u1:d:{i}", label="defective",
                           p_defect=0.9, model="m", ts=f"2026-11-28T03:{i:02d}:00.000Z")
        items += [writer.Item("alert", "u1", 1.0, message=a),
                  writer.Item("snapshot", "u1", 1.0, key=frame, sha256=sha, size=len(data))]
        truth = "right" if part.defective else "wrong_good"  # the unit called them all defective
        writer.write(engine, items[-2:])
        review.record(engine, device_id="u1", frame_id=frame, verdict=truth, note="", user="op", request_id=None)
    out = tmp_path / "reviewed"
    counts = review.export(engine, cfg.images_dir, out, holdout=0.25)
    assert counts["eval_good"] + counts["eval_defect"] == 10 and min(counts.values()) > 0, counts
    tool = str(Path(sys.executable).parent / "defect-convert")
    run = {"capture_output": True, "text": True, "timeout": 600}
    trained = subprocess.run([tool, "train", str(out / "train"), "--arch", "cnn", "--epochs", "1", "--out",
                              str(tmp_path / "reviewed.h5")], **run)  # type: ignore[call-overload]
    assert trained.returncode == 0, trained.stderr[-2000:]
    converted = subprocess.run([tool, "convert", str(tmp_path / "reviewed.h5"), "--eval", str(out / "eval"),
                                "--quantize", "float32", "--min-agreement", "0"], **run)  # type: ignore[call-overload]
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert json.loads((tmp_path / "reviewed.json").read_text())["parity"]["n"] == 10


@pytest.mark.tensorflow
def test_a_heatmap_for_a_frame_the_unit_no_longer_buffers(tmp_path: Path) -> None:
    """The unit is asked (cmd/gradcam); the console also makes one from its stored snapshot with the same Grad-CAM
    worker and the model's .h5 from its store, and keeps it with the frame."""
    import time

    import cv2

    from converter import synth
    from harness import REPO

    cfg = config.parse({"state": {"dir": str(tmp_path / "state")}, "models_dir": str(REPO / "models")})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    auth.add_user(engine, "op", PW, "operator")
    data = cv2.imencode(".jpg", synth.render(3, 3, size=256, defect="crack").image[:, :, ::-1])[1].tobytes()
    sha = images.store(cfg.images_dir, data)
    a = payloads.Alert(device_id="u1", kind="defect", frame_id="u1-1-000000007", dedup_key="u1:d:7",
                       label="defective", p_defect=0.9, model="mobilenetv2")
    writer.write(engine, [writer.Item("alert", "u1", 1.0, message=a),
                          writer.Item("snapshot", "u1", 1.0, key="u1-1-000000007", sha256=sha, size=len(data))])
    sent: list[tuple[str, bytes]] = []
    services = Services(cfg, engine, LiveHub(), lambda t, p: sent.append((t, p)))
    client = TestClient(create_app(services))
    token = login(client, "op")
    assert "Make one" in client.get("/review").text
    r = client.post("/review/heatmap", data={"csrf": token, "device_id": "u1", "frame_id": "u1-1-000000007"})
    assert "asked the unit, and making one here" in r.text
    assert [t for t, _ in sent] == ["defect-edge/u1/cmd/gradcam"]
    deadline = time.monotonic() + 180
    state = ""
    while time.monotonic() < deadline:
        state = client.get("/review/heatmap?device_id=u1&frame_id=u1-1-000000007").text
        if 'id="heatmap"' in state:
            break
        time.sleep(0.5)
    services.inspector.stop()
    assert 'id="heatmap"' in state, state
    rows, _ = review.queue(engine, device_id="u1", frame_id="u1-1-000000007", state="all")
    assert rows[0]["heatmap"] and images.path_of(cfg.images_dir, rows[0]["heatmap"]).read_bytes()[:2] == b"\xff\xd8"


def test_a_part_is_reviewed_with_its_crop_and_the_whole_frame(tmp_path: Path) -> None:
    """A part's alert names its deciding frame; the unit sends what the model saw (the crop) as the snapshot and the
    whole frame with the crop boxed on frame/<frame_id>: the reviewer sees both, and both are kept once reviewed."""
    from console.ingest import Historian

    cfg = config.parse({"state": {"dir": str(tmp_path / "state")}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    auth.add_user(engine, "op", PW, "operator")
    h = Historian(cfg, engine)
    frame = "u1-1-000000007"
    a = payloads.Alert(device_id="u1", kind="defect", frame_id=frame, dedup_key="u1:defect:u1-1-p000000007",
                       label="defective", p_defect=0.9, model="m", part_id="u1-1-p000000007")
    items = [h.accept("defect-edge/u1/alert", payloads.dumps(a)),
             h.accept(f"defect-edge/u1/snapshot/{frame}", jpeg(1)),
             h.accept(f"defect-edge/u1/frame/{frame}", jpeg(2))]
    writer.write(engine, items)
    client = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: None)))
    token = login(client, "op")
    page = client.get("/review").text
    assert 'id="snapshot"' in page and 'id="whole-frame"' in page and "the crop boxed" in page
    client.post("/review", data={"csrf": token, "device_id": "u1", "frame_id": frame, "verdict": "right"})
    with engine.connect() as conn:
        kept = conn.execute(select(s.images.c.sha256).where(s.images.c.reviewed.is_(True))).all()
    assert len(kept) == 2, "the crop and the whole frame are kept as reviewed"
    part = payloads.Part(device_id="u1", ts=a.ts, part_id="u1-1-p000000007", seq=7, trigger="gpio", verdict="ng",
                         aggregate="max", frames=[], frame_id=frame, p_defect=0.9,
                         model=payloads.ModelRef(name="m", quantization="int8", sha256="5" * 64), timings_ms={})
    writer.write(engine, [h.accept("defect-edge/u1/part", payloads.dumps(part))])
    review.export(engine, cfg.images_dir, tmp_path / "out", holdout=0.0)
    row = (tmp_path / "out" / "manifest.csv").read_text().splitlines()[1]
    assert row.endswith(",u1-1-p000000007,ng"), "the export names the part the frame decided"


def test_a_link_from_a_mail_lands_on_its_part_after_the_login(
        world: tuple[TestClient, Engine, list[tuple[str, bytes]], config.ConsoleConfig]) -> None:
    """The relay's mails link to one part's review (``/review?unit=..&frame=..``): the login in between keeps the
    query, or the reviewer lands on the queue's oldest item instead of the part the mail was about; the verdict is
    announced for the relay, which stops escalating it."""
    client, _, sent, _ = world
    link = "/review?unit=u1&frame=u1-1-000000007"
    r = client.get(link, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Freview%3Funit%3Du1%26frame%3Du1-1-000000007"
    nxt = re.search(r'name="next" value="([^"]+)"', client.get(r.headers["location"]).text)
    assert nxt and nxt.group(1).replace("&amp;", "&") == link
    r = client.post("/login", data={"name": "op", "password": PW, "next": link}, follow_redirects=False)
    assert r.headers["location"] == link
    page = client.get(link).text
    assert 'data-frame="u1-1-000000007"' in page
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    client.post("/review", data={"csrf": token.group(1), "device_id": "u1", "frame_id": "u1-1-000000007",
                                 "verdict": "right"})
    announced = [json.loads(p) for t, p in sent if t == "defect-console/console1/reviewed"]
    assert [(a["unit"], a["frame_id"], a["verdict"], a["by"]) for a in announced] == [
        ("u1", "u1-1-000000007", "right", "op")]


def test_a_mails_one_time_link_records_a_review_once_and_only_by_its_button(
        world: tuple[TestClient, Engine, list[tuple[str, bytes]], config.ConsoleConfig], tmp_path: Path) -> None:
    """Opening the link records nothing (mail scanners open links); the button records it in the name of the mail's
    recipients, audited, tells the unit and the relay; a second use, a changed link and an expired one are refused
    with a sentence, and a console without the key takes none."""
    from contract import links

    _, engine, sent, cfg = world
    key_file = tmp_path / "mail_link_key"
    key_file.write_text("k" * 64)
    keyed = config.parse({"state": {"dir": str(cfg.state.dir)}, "web": {"mail_link_key_file": str(key_file)}})
    client = TestClient(create_app(Services(keyed, engine, LiveHub(), lambda t, p: sent.append((t, p)))))
    token = links.sign(key_file.read_bytes(), "u1", "u1-1-000000004", "wrong_good", "lead3@plant.example", 3600)
    page = client.get(f"/quick/{token}")
    assert page.status_code == 200 and "a false alarm: the part is good" in page.text
    with engine.connect() as conn:
        assert conn.execute(select(s.reviews)).first() is None, "opening the link records nothing"
    done = client.post(f"/quick/{token}", data={"confirm": "1"})
    assert done.status_code == 200 and 'id="quick-done"' in done.text
    with engine.connect() as conn:
        row = conn.execute(select(s.reviews)).mappings().one()
        audit = conn.execute(select(s.audit).where(s.audit.c.action == "mail_review")).mappings().one()
    assert (row["frame_id"], row["verdict"], row["truth"], row["user"]) == (
        "u1-1-000000004", "wrong_good", "good", "mail to lead3@plant.example")
    assert audit["user"] == "mail to lead3@plant.example"
    topics_sent = [t for t, _ in sent]
    assert "defect-console/console1/reviewed" in topics_sent and "defect-edge/u1/cmd/feedback" in topics_sent
    again = client.post(f"/quick/{token}", data={"confirm": "1"})
    assert again.status_code == 409 and "used already" in again.text
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert client.get(f"/quick/{forged}").status_code == 400
    old = links.sign(key_file.read_bytes(), "u1", "u1-1-000000005", "right", "x@plant.example", 1, now=1.0)
    r = client.get(f"/quick/{old}")
    assert r.status_code == 400 and "expired" in r.text
    plain = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: None)))
    assert plain.get(f"/quick/{token}").status_code == 404
