"""The web console's rules, in-process (Starlette's TestClient, which does not stream: the live view is tested in
Chromium by test_console_web.py): who may see and do what, CSRF and origin checks, headers, escaping, redirects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from console import auth, config
from console.app import Services, create_app
from console.live import LiveHub
from console.store import db, writer
from contract import payloads
from core import manifest as mf
from harness import REPO

PW = "a long password"


@pytest.fixture
def app(tmp_path: Path) -> tuple[TestClient, list[tuple[str, bytes]]]:
    cfg = config.parse({"state": {"dir": str(tmp_path)}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    for name, role in (("view", "viewer"), ("eng", "engineer"), ("admin", "admin")):
        auth.add_user(engine, name, PW, role)
    a = payloads.Alert(device_id="u1", kind="defect", frame_id="u1-1-000000001", dedup_key="u1:defect:1",
                       label="defective", p_defect=0.9, note="<img src=x onerror=alert(1)>")
    writer.write(engine, [writer.Item("alert", "u1", 1.0, message=a),
                          writer.Item("available", "u1", 1.0, online=True)])
    sent: list[tuple[str, bytes]] = []
    client = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: sent.append((t, p)))))
    return client, sent


def login(client: TestClient, name: str) -> str:
    r = client.post("/login", data={"name": name, "password": PW, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    m = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert m
    return m.group(1)


def test_pages_need_a_session_and_say_so_with_a_redirect(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    for path in ("/", "/alerts", "/units/u1", "/reports", "/live"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    r = client.get("/login")
    assert "default-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"


def test_a_login_never_redirects_off_site(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        r = client.post("/login", data={"name": "view", "password": PW, "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/"
    r = client.post("/login", data={"name": "view", "password": "nope"})
    assert "Wrong user name or password" in r.text and "console_session" not in r.cookies


def test_roles_are_enforced_on_the_server(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, sent = app
    token = login(client, "view")
    assert client.get("/users").status_code == 403 and client.get("/audit").status_code == 403
    r = client.post("/units/u1/commands/threshold", data={"csrf": token, "threshold": "0.2"})
    assert r.status_code == 403 and sent == []
    r = client.post("/users", data={"csrf": token, "action": "role", "name": "view", "role": "admin"})
    assert r.status_code == 403
    assert "Commands need the engineer role" in client.get("/units/u1").text


def test_commands_need_the_csrf_token_and_this_origin(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, sent = app
    token = login(client, "eng")
    assert client.post("/units/u1/commands/threshold", data={"threshold": "0.2"}).status_code == 403
    assert client.post("/units/u1/commands/threshold", data={"csrf": "x" + token, "threshold": "0.2"}
                       ).status_code == 403
    r = client.post("/units/u1/commands/threshold", data={"csrf": token, "threshold": "0.2"},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and sent == []
    r = client.post("/units/u1/commands/threshold", data={"threshold": "0.2"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and "waiting for the unit" in r.text
    assert sent[0][0] == "defect-edge/u1/cmd/threshold" and b'"threshold": 0.2' in sent[0][1]
    r = client.post("/units/u1/commands/threshold", data={"csrf": token, "threshold": "2"})
    assert "not sent" in r.text and len(sent) == 1, "what the unit would refuse is not sent"
    assert client.post("/units/u1/commands/reboot", data={"csrf": token}).status_code == 404
    assert client.post("/units/a+b/commands/trigger", data={"csrf": token}).status_code == 404


def test_what_units_send_is_shown_as_text(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    login(client, "view")
    page = client.get("/alerts/u1:defect:1").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page


def test_images_are_served_by_name_only(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    login(client, "view")
    for bad in ("../../etc/passwd", "a" * 64, "%2e%2e%2fsecret_key"):
        assert client.get(f"/images/{bad}.jpg").status_code == 404


def test_admins_manage_users_and_changes_apply_at_once(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    token = login(client, "admin")
    r = client.post("/users", data={"csrf": token, "action": "add", "name": "lead", "password": "short",
                                    "role": "operator"})
    assert r.status_code == 400 and "at least 10" in r.text
    client.post("/users", data={"csrf": token, "action": "add", "name": "lead", "password": PW, "role": "operator"})
    other = TestClient(client.app)
    other.post("/login", data={"name": "lead", "password": PW})
    assert other.get("/").status_code == 200
    client.post("/users", data={"csrf": token, "action": "role", "name": "lead", "role": "operator", "disabled": "1"})
    assert other.get("/", follow_redirects=False).status_code == 303, "a disabled user's session ends at once"


@pytest.fixture
def inspect_app(tmp_path: Path) -> tuple[TestClient, str]:
    from harness import REPO

    cfg = config.parse({"state": {"dir": str(tmp_path)}, "models_dir": str(REPO / "models")})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    auth.add_user(engine, "op", PW, "operator")
    auth.add_user(engine, "view", PW, "viewer")
    client = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: None)))
    return client, login(client, "op")


def test_inspect_calls_a_photo_exactly_as_the_unit_does(inspect_app: tuple[TestClient, str], tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import cv2

    from converter import synth

    client, token = inspect_app
    part = tmp_path / "part.jpg"
    cv2.imwrite(str(part), synth.sample(5, 3, size=300).image[:, :, ::-1])
    page = client.get("/inspect").text
    committed = mf.load(REPO / "models" / "mobilenetv2.json").quantization
    assert f"mobilenetv2 · {committed} · parity" in page
    r = client.post("/inspect", data={"csrf": token, "model": "mobilenetv2"},
                    files=[("files", ("part.jpg", part.read_bytes(), "image/jpeg"))])
    got = float(re.search(r'class="p_defect">([0-9.]+)<', r.text).group(1))  # type: ignore[union-attr]
    cli = subprocess.run([str(Path(sys.executable).parent / "defect-edge"), "classify", str(part), "--json",
                          "--models-dir", str(Path(__file__).resolve().parent.parent / "models")],
                         capture_output=True, text=True, timeout=120)
    expected = json.loads(cli.stdout.splitlines()[0])["p_defect"]
    assert abs(got - expected) <= 1e-6, (got, expected)
    ids = re.findall(r"/inspect/([0-9a-f]{16})/heatmap", r.text)
    csv_text = client.get(f"/inspect/calls.csv?id={ids[0]}").text
    assert csv_text.splitlines()[0].startswith("file,model,label,p_defect") and "part.jpg,mobilenetv2" in csv_text


def test_inspect_locates_the_part_in_a_whole_frame_and_says_when_the_model_never_saw_its_like(
        inspect_app: tuple[TestClient, str], tmp_path: Path, casting: Path) -> None:
    """A frame from a line: a casting photo on a dark belt. Located, the model is fed the photo's square, as a unit
    would crop it (the call `classify --locate` makes); and the demo MobileNetV2, trained on synthetic parts, says
    it has never seen an impeller instead of only calling it defective."""
    import json
    import subprocess
    import sys

    import cv2
    import numpy as np

    from harness.data import casting_sample

    client, token = inspect_app
    photo = cv2.imread(str(casting_sample(1)[0]))
    frame = np.full((360, 640, 3), 40, np.uint8)
    frame[30:330, 170:470] = photo
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), frame)
    r = client.post("/inspect", data={"csrf": token, "model": "mobilenetv2", "locate": "on"},
                    files=[("files", ("frame.png", path.read_bytes(), "image/png"))])
    assert "the part&#39;s 300×300 at 170,30" in r.text or "the part's 300×300 at 170,30" in r.text, r.text[-2000:]
    assert "unlike anything the model was trained on" in r.text
    got = float(re.search(r'class="p_defect">([0-9.]+)<', r.text).group(1))  # type: ignore[union-attr]
    cli = subprocess.run([str(Path(sys.executable).parent / "defect-edge"), "classify", str(path), "--json",
                          "--locate", "--models-dir", str(REPO / "models")], capture_output=True, text=True,
                         timeout=120)
    line = json.loads(cli.stdout.splitlines()[0])
    assert line["crop"] == [170, 30, 300, 300] and abs(got - line["p_defect"]) <= 1e-6
    assert line["ood"] > mf.load(REPO / "models" / "mobilenetv2.json").signature.threshold  # type: ignore[union-attr]


def test_inspect_refuses_bad_files_with_a_clear_message(inspect_app: tuple[TestClient, str]) -> None:
    import struct
    import zlib

    client, token = inspect_app
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2,
                                                                                0, 0, 0)
    bomb += struct.pack(">I", zlib.crc32(bomb[12:29]))
    files = [("files", ("notes.txt", b"not an image at all", "text/plain")),
             ("files", ("half.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg")),
             ("files", ("bomb.png", bomb, "image/png")), ("files", ("empty.png", b"", "image/png"))]
    r = client.post("/inspect", data={"csrf": token, "model": "mobilenetv2"}, files=files)
    assert r.status_code == 200
    assert "not inspected: not a JPEG or PNG file" in r.text
    assert "not inspected: a JPEG without a frame header" in r.text
    assert "declares 100000x100000 pixels" in r.text and "decompression bomb" in r.text
    assert "not inspected: an empty file" in r.text
    r = client.post("/inspect", data={"csrf": token, "model": "nope"},
                    files=[("files", ("x.png", bomb, "image/png"))])
    assert "declares" in r.text
    big = client.post("/inspect", data={"csrf": token, "model": "mobilenetv2"},
                      files=[("files", ("big.jpg", b"\xff\xd8" + bytes(100 * 1024 * 1024), "image/jpeg"))])
    assert big.status_code == 413 and "limited to 20 MB" in big.text
    r = client.post("/inspect", data={"model": "mobilenetv2"}, files=[("files", ("a.png", bomb, "image/png"))])
    assert r.status_code == 403, "no CSRF token, no inspection"


def test_a_model_without_its_h5_inspects_but_says_why_there_is_no_heatmap(tmp_path: Path) -> None:
    import shutil

    from harness import REPO

    store = tmp_path / "models"
    store.mkdir()
    for suffix in (".tflite", ".json", ".signature.npz"):
        shutil.copy(REPO / "models" / f"mobilenetv2{suffix}", store)
    cfg = config.parse({"state": {"dir": str(tmp_path / "state")}, "models_dir": str(store)})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    auth.add_user(engine, "op", PW, "operator")
    client = TestClient(create_app(Services(cfg, engine, LiveHub(), lambda t, p: None)))
    token = login(client, "op")
    assert "no heatmaps (no .h5)" in client.get("/inspect").text
    data = (REPO / "docs" / "console" / "fleet.png").read_bytes()
    r = client.post("/inspect", data={"csrf": token, "model": "mobilenetv2"},
                    files=[("files", ("screen.png", data, "image/png"))])
    upload = re.search(r"/inspect/([0-9a-f]{16})/heatmap", r.text).group(1)  # type: ignore[union-attr]
    r = client.post(f"/inspect/{upload}/heatmap", data={"csrf": token, "method": "gradcam"})
    assert "no heatmap: the Keras model of mobilenetv2 (its .h5) is not in the model store" in r.text


def test_inspect_needs_the_operator_role(inspect_app: tuple[TestClient, str]) -> None:
    client, _ = inspect_app
    viewer = TestClient(client.app)
    login(viewer, "view")
    assert viewer.get("/inspect").status_code == 403


def _with_cookie(client: TestClient, cookie: str, address: str = "testclient") -> TestClient:
    other = TestClient(client.app, client=(address, 50001))
    other.cookies.set("console_session", cookie)
    return other


def test_a_logout_a_password_change_and_disabling_end_sessions_at_once(
        app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    """Before, after POST /logout the old cookie still opened pages and could add users as admin; the same after an
    admin changed the password, and disable-then-enable brought old sessions back."""
    client, _ = app
    token = login(client, "admin")
    stolen = _with_cookie(client, client.cookies["console_session"])
    assert stolen.get("/users").status_code == 200
    client.post("/logout", data={"csrf": token})
    assert stolen.get("/users", follow_redirects=False).status_code == 303
    r = stolen.post("/users", data={"csrf": token, "action": "add", "name": "mallory", "password": PW,
                                    "role": "admin"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")

    token = login(client, "admin")
    assert "mallory" not in client.get("/users").text, "the old cookie added no one"
    viewer = TestClient(client.app)
    login(viewer, "view")
    held = _with_cookie(client, viewer.cookies["console_session"])
    client.post("/users", data={"csrf": token, "action": "password", "name": "view", "password": PW + "!"})
    assert held.get("/", follow_redirects=False).status_code == 303, "an admin's password change ends them"
    viewer = TestClient(client.app)
    viewer.post("/login", data={"name": "view", "password": PW + "!", "next": "/"})
    held = _with_cookie(client, viewer.cookies["console_session"])
    for disabled in ("1", ""):
        client.post("/users", data={"csrf": token, "action": "role", "name": "view", "role": "viewer",
                                    "disabled": disabled})
    assert held.get("/", follow_redirects=False).status_code == 303, "enabled again: the old session stays ended"

    assert "Sign out everywhere" in client.get("/account").text
    elsewhere = _with_cookie(client, client.cookies["console_session"])
    client.post("/logout", data={"csrf": token, "everywhere": "1"})
    assert elsewhere.get("/", follow_redirects=False).status_code == 303


def test_own_password_needs_the_current_one_and_keeps_this_session(
        app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    token = login(client, "view")
    other = TestClient(client.app)
    login(other, "view")
    r = client.post("/account/password", data={"csrf": token, "current": "wrong one!", "password": PW + "2"})
    assert r.status_code == 400 and "current password is wrong" in r.text
    r = client.post("/account/password", data={"csrf": token, "current": PW, "password": PW + "2"})
    assert r.status_code == 200 and "Password changed" in r.text
    assert client.get("/", follow_redirects=False).status_code == 200, "this session goes on"
    assert other.get("/", follow_redirects=False).status_code == 303, "the others end"


def test_others_cannot_lock_a_user_out(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    """Before: five wrong passwords a minute from any address kept even the right password at 429."""
    client, _ = app
    attacker = TestClient(client.app, client=("203.0.113.9", 40000))
    for _ in range(12):
        attacker.post("/login", data={"name": "admin", "password": "guess guess", "next": "/"})
    assert attacker.post("/login", data={"name": "admin", "password": PW}).status_code == 429
    r = client.post("/login", data={"name": "admin", "password": PW, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, "the user, from their own address, logs in"


def test_login_origin_cache_and_audit_of_what_visitors_type(app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    client, _ = app
    r = client.post("/login", data={"name": "admin", "password": PW}, headers={"Origin": "http://evil.example"},
                    follow_redirects=False)
    assert r.status_code == 403, "a login forced from another site"
    client.post("/login", data={"name": "evil\nadmin\x1b[2J", "password": "x"})
    token = login(client, "admin")
    assert client.get("/").headers["cache-control"] == "no-store"
    audit = client.get("/audit").text
    assert "(not signed in)" in audit and "evil\nadmin" not in audit and "&#39;evil?admin?[2J&#39;" in audit
    r = client.post("/inspect", data={"csrf": token}, headers={"Origin": "http://evil.example",
                                                             "content-length": "10"})
    assert r.status_code == 403, "POST /inspect checks the origin too"


HOSTILE = ("9" * 30, "-1", "0", "nan", "1e309", "", "a" * 700, "\x00", "../../etc/passwd", "%ff", "ü" * 40,
           "<script>", "2026-13-45", "unit1'--")


def test_every_route_answers_hostile_parameters_without_a_server_error(
        app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    """Before: GET /alerts?page_no=<30 digits> was a 500 (OverflowError) and a dropped connection. Every route, every
    parameter it reads (path, query, form), with each hostile value: never a 5xx."""
    import itertools
    from urllib.parse import quote

    from fastapi.routing import APIRoute

    client, _ = app
    token = login(client, "admin")
    client.raise_server_exceptions = False  # a 500 is what is looked for, not a traceback in the test
    names = ("page_no", "unit", "kind", "day", "by", "next", "state", "model", "since", "kinds", "id", "method",
             "threshold", "low_confidence_band", "name", "role", "action", "verdict", "note", "frame_id", "device_id")
    checked = 0
    from console.app import ROUTERS

    for route in [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]:
        if route.path in ("/live", "/logout"):
            continue  # a stream, and the end of the session the rest needs (both tested on their own)
        for method, value in itertools.product(sorted(route.methods), HOSTILE):
            path = route.path
            for param in route.param_convertors:
                path = path.replace("{" + param + "}", quote(value, safe="") or "x")
            fields = dict.fromkeys(names, value)
            if method == "GET":
                r = client.get(path, params=fields, follow_redirects=False)
            else:
                r = client.post(path, data={**fields, "csrf": token}, follow_redirects=False)
            assert r.status_code < 500, (method, route.path, value[:40], r.status_code, r.text[:300])
            checked += 1
    assert checked > 300


def test_the_fleet_and_the_reports_count_parts(app: tuple[TestClient, list[tuple[str, bytes]]],
                                              tmp_path: Path) -> None:
    """A line where 4 of 16 parts are NG reads 25 % NG of 16 parts (it read a share of frames), live on the fleet
    page, and by hour, shift, day and week in the reports, with CSV."""
    import csv
    import io
    import time

    from contract import topics

    client, _ = app
    engine = db.engine_for(config.parse({"state": {"dir": str(tmp_path)}}).database_url())  # the app's store
    now = time.time()
    hour = now - now % 3600
    # all 16 within the last minute and inside one hour (the previous one in an hour's first 16 s), so the
    # hour, shift, day and week rows each hold all of them whatever the time of day
    first = max(hour, now - 60) if now - hour >= 16 else hour - 16
    items = []
    for i, v in enumerate(["ok"] * 12 + ["ng"] * 4, 1):
        m = payloads.Part(device_id="u1", ts=topics.iso(first + i - 1), part_id=f"u1-1-p{i:09d}", seq=i,
                          trigger="presence", verdict=v, aggregate="max", frames=[],
                          p_defect=0.9 if v == "ng" else 0.1, frame_id=f"u1-1-{i:09d}",
                          model=payloads.ModelRef(name="m", quantization="int8", sha256="5" * 64), timings_ms={})
        items.append(writer.Item("part", "u1", now, message=m, raw=payloads.dumps(m)))
    writer.write(engine, items)
    login(client, "view")
    fleet = client.get("/").text
    assert "25.0% NG" in fleet and "of 16 parts" in fleet and "FPY 75.0%" in fleet
    for by in ("hour", "shift", "day", "week"):
        page = client.get("/reports", params={"by": by, "model": "1"}).text
        assert f"Parts by {by}" in page and "<td>16</td><td>12</td><td>4</td>" in page, by
    rows = list(csv.DictReader(io.StringIO(client.get("/reports/parts.csv", params={"by": "shift"}).text)))
    assert [(r["unit"], r["parts"], r["ng"], r["fpy"]) for r in rows] == [("u1", "16", "4", "0.75")]


def test_the_audit_pages_filters_and_says_a_late_feedback_neutrally(app: tuple[TestClient, list[tuple[str, bytes]]],
                                                                    tmp_path: Path) -> None:
    import json

    from console.store import schema as s

    client, _ = app
    engine = db.engine_for(config.parse({"state": {"dir": str(tmp_path)}}).database_url())
    late = json.dumps({"ok": False, "error": "frame 'u1-1-000000009' is unknown or no longer buffered (the unit "
                                             "keeps its last 256 frames)"})
    with engine.begin() as conn:
        conn.execute(s.commands.insert(), [
            {"request_id": f"console-{i}", "ts": 1000.0 + i, "user": "op" if i % 2 else "lead",
             "device_id": "u1", "command": "feedback", "args": "{}", "reply_ok": False, "reply": late,
             "replied_at": 1001.0 + i} for i in range(150)])
    login(client, "eng")
    page = client.get("/audit").text
    assert "verdict stored here; the unit no longer had the frame" in page and "refused: frame" not in page
    assert page.count("<td>feedback") == 100 and "older</a>" in page, "100 a page"
    second = client.get("/audit", params={"page_no": 2}).text
    assert second.count("<td>feedback") == 50 and "newer</a>" in second
    only = client.get("/audit", params={"who": "op", "action": "feedback"}).text
    assert only.count("<td>feedback") == 75 and "<td>lead</td>" not in only


def test_a_units_release_shows_with_its_shadow_and_the_engineer_commands_it(
        app: tuple[TestClient, list[tuple[str, bytes]]]) -> None:
    """The unit page shows the release on its way (state, reason, the shadow's figures, its disagreements linked to
    their review) and an engineer's release/promote/reject/rollback go to the unit as the contract types them."""
    import json

    from console.store import db, writer

    client, sent = app
    engine = db.engine_for(client.app.state.web.cfg.database_url())  # type: ignore[attr-defined]
    status = payloads.Status(
        device_id="u1", software_version="t", started_at="2026-12-05T06:00:00Z", uptime_s=1, mode="continuous",
        model=payloads.StatusModel(name="casting", quantization="int8", sha256="a" * 64),
        camera=payloads.CameraState(state="streaming"), gradcam={"state": "idle"},
        release={"name": "casting", "version": 4, "state": "shadow", "since": 1.0,
                 "reason": "<script>alert(1)</script>",
                 "shadow": {"share": 0.25, "offered": 400, "compared": 97, "skipped_busy": 3, "errors": 0,
                            "agreement": 0.9588, "dp": {"mean": 0.01, "p5": -0.2, "p50": 0.0, "p95": 0.3,
                                                        "max_abs": 0.71},
                            "inference_ms": {"p50": 4.2, "p95": 5.9}, "ng_rate": 0.12, "ood": None,
                            "disagreements": ["u1-1-000000007", "u1-1-000000042"]}})
    writer.write(engine, [writer.Item("status", "u1", 2.0, raw=payloads.dumps(status))])
    token = login(client, "eng")
    page = client.get("/units/u1").text
    assert 'class="release-state shadow">shadow<' in page and "97 frames compared of 400 offered" in page
    assert "95.9% of its calls" in page and "largest 0.71" in page
    assert '<a href="/review?unit=u1&amp;frame=u1-1-000000042">' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    for name, form in (("release", {"name": "casting", "version": "5"}), ("promote", {}), ("reject", {}),
                       ("rollback", {})):
        r = client.post(f"/units/u1/commands/{name}", data={"csrf": token, **form})
        assert r.status_code == 200 and "refused" not in r.text, r.text
    published = {t.rsplit("/", 1)[1]: json.loads(p) for t, p in sent if "/cmd/" in t}
    assert published["release"]["name"] == "casting" and published["release"]["version"] == 5
    assert set(published) >= {"release", "promote", "reject", "rollback"}
    r = client.post("/units/u1/commands/release", data={"csrf": token, "name": "../etc", "version": "x"})
    assert "casting" not in r.text and ("name" in r.text or "version" in r.text)
    assert len([t for t, _ in sent if t.endswith("/cmd/release")]) == 1, "a refused one is not sent"
    login(client, "view")
    assert "Fetch and shadow" not in client.get("/units/u1").text, "the buttons are the engineer's"
