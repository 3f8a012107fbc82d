"""The console as a person uses it: a real headless Chromium (Debian's, driven by Playwright) against a real console
process, a real Mosquitto, simulated units and one real ``defect-edge run``. Each test saves screenshots of the
pages it saw under ``var/screenshots/``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import REPO
from harness.broker import Broker, Collector
from harness.browser import shot
from harness.console import PASSWORD, ConsoleProc
from harness.daemon import Daemon, part_folder
from harness.units import SimUnit
from harness.wait import until

pytestmark = pytest.mark.processes


@pytest.fixture
def console(tmp_path: Path, broker: Broker) -> Iterator[ConsoleProc]:
    c = ConsoleProc(tmp_path / "console", broker.port).start()
    yield c
    c.kill()


def login(browser: Any, console: ConsoleProc, user: str) -> Any:
    """A page logged in as ``user``; ``browser`` may be a browser or a context (with its own headers)."""
    page = browser.new_page(viewport={"width": 1280, "height": 860}) if hasattr(browser, "new_context") \
        else browser.new_page()
    page.dialogs = []  # any alert() a page runs is a script that should not have run
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(f"{console.url}/")
    assert "/login" in page.url
    page.fill("input[name=name]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/")
    return page


def fresh(page: Any) -> str:
    """The page's HTML after a reload."""
    page.reload()
    return str(page.content())


def sim(broker: Broker) -> Collector:
    return Collector(broker.port, "defect-edge/+/cmd/+", persistent=False)


def test_fleet_shows_units_live_and_an_alert_with_its_evidence(browser: Any, console: ConsoleProc, broker: Broker,
                                                             tmp_path: Path, models_dir_committed: Path,
                                                             daemons: list[Daemon]) -> None:
    page = login(browser, console, "view")
    assert page.locator("tr.empty").count() == 1, "no unit yet"
    pub = sim(broker)
    unit = SimUnit(pub.client, "line3-a")
    unit.online()
    unit.status()
    unit.metrics(10.0)
    row = page.locator('tr[data-unit="line3-a"]')
    row.wait_for(timeout=10_000)  # appears without a reload
    page.locator('tr[data-unit="line3-a"] [data-field="fps"]', has_text="10.0").wait_for(timeout=10_000)
    unit.metrics(24.5)
    page.locator('tr[data-unit="line3-a"] [data-field="fps"]', has_text="24.5").wait_for(timeout=10_000)
    for verdict in ["ok"] * 3 + ["ng"]:  # the line's parts: counted live, as the store counts them
        unit.part(verdict)
    page.locator('tr[data-unit="line3-a"] [data-defective]', has_text="25.0% NG of 4 parts").wait_for(
        timeout=10_000)
    unit.online(False)
    page.locator('tr[data-unit="line3-a"] [data-field="online"]', has_text="offline").wait_for(timeout=10_000)

    # One real unit, replaying photos through the same broker.
    d = Daemon(tmp_path / "unit", {
        "device": {"id": "station9"}, "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "camera": {"source": str(part_folder(tmp_path / "parts", count=6)), "fps": 8, "loop": True},
        "model": {"name": "mobilenetv2", "models_dir": str(models_dir_committed), "threshold": 0.0},
        "alerts": {"repeat_after_s": 2.0, "on_low_confidence": False}, "metrics": {"interval_s": 1},
        "gradcam": {"enabled": False}, "state": {"dir": str(tmp_path / "unit" / "state")}})
    daemons.append(d.start())
    page.locator('tr[data-unit="station9"] [data-field="fps"]').filter(has_text=re.compile(r"\d")).wait_for(
        timeout=30_000)
    page.reload()
    assert "mobilenetv2" in page.locator('tr[data-unit="station9"]').inner_text()
    shot(page, "fleet")

    frame = unit.result(0.93, qos=1)
    key = unit.alert(frame, note="<script>alert('x')</script><b>bold?</b>")
    page.goto(f"{console.url}/alerts")
    page.locator("table.alerts a", has_text="20").first.wait_for()
    shot(page, "alerts")
    page.goto(f"{console.url}/alerts/{key}")
    for img in ("#snapshot", "#heatmap"):  # loaded and decoded: a real picture, not a broken link
        assert until(lambda img=img: page.locator(img).evaluate("i => i.complete && i.naturalWidth") > 0)
    assert "<script>alert('x')</script><b>bold?</b>" in page.locator("table.facts").inner_text(), "shown as text"
    shot(page, "alert")
    page.goto(f"{console.url}/units/station9")
    page.locator("#calls li").first.wait_for()
    n = page.locator("#calls li").count()
    assert until(lambda: page.locator("#calls li").count() > n, 15), "new calls appear without a reload"
    page.reload()
    charted = page.evaluate("""() => ({p: document.getElementById('chart-p').chart.data,
                                      fps: document.getElementById('chart-fps').chart.data[0].length,
                                      span: document.getElementById('chart-fps').chart.scales.x.max -
                                            document.getElementById('chart-fps').chart.scales.x.min,
                                      series: document.getElementById('chart-p').chart.series.map(s => s.label)})""")
    assert charted["fps"] >= 1, "the throughput chart has the store's last minutes when the page opens"
    assert 3500 < charted["span"] < 3700, "over the last hour"
    assert charted["series"][1:] == ["p_defect", "threshold"] and set(charted["p"][2]) == {0.0}, \
        "p_defect over time, with the unit's threshold (0.0 here) as a line"
    assert min(charted["p"][0]) > 1.7e9, "a time axis: the calls' own times"
    shot(page, "unit")
    assert page.dialogs == [], "no script from a unit ran"
    pub.close()


def test_roles_csrf_and_commands_through_the_broker(browser: Any, console: ConsoleProc, broker: Broker) -> None:
    pub = sim(broker)
    unit = SimUnit(pub.client, "line3-b")
    unit.online()
    unit.status()
    viewer = login(browser, console, "view")
    viewer.goto(f"{console.url}/units/line3-b")
    assert viewer.locator("form[hx-post]").count() == 0 and "Commands need the engineer role" in viewer.content()
    csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
    r = viewer.request.post(f"{console.url}/units/line3-b/commands/threshold",
                            form={"csrf": csrf, "threshold": "0.1"})
    assert r.status == 403, "a viewer cannot command, whatever the page shows"
    assert viewer.request.get(f"{console.url}/users").status == 403

    eng = login(browser, console, "eng")
    eng.goto(f"{console.url}/units/line3-b")
    forged = eng.request.post(f"{console.url}/units/line3-b/commands/threshold", form={"threshold": "0.1"})
    assert forged.status == 403 and "CSRF" in forged.text()
    token = eng.locator("input[name=csrf]").first.get_attribute("value")
    cross = eng.request.post(f"{console.url}/units/line3-b/commands/threshold",
                             form={"csrf": token, "threshold": "0.1"}, headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    assert not pub.on("/cmd/threshold"), "nothing refused reached the broker"

    eng.fill("input[name=threshold]", "0.35")
    eng.click("text=Set")
    assert pub.wait(lambda m: any(t.endswith("/cmd/threshold") for t, _, _ in m), 10)
    sent = json.loads(pub.on("/cmd/threshold")[0])
    assert sent["threshold"] == 0.35 and sent["request_id"].startswith("console-")
    eng.locator("#command-log td.waiting").wait_for()
    pub.publish("defect-edge/line3-b/cmd/threshold/reply", json.dumps({
        "schema": 1, "device_id": "line3-b", "ts": "2026-11-28T03:00:00.000Z", "command": "threshold",
        "request_id": sent["request_id"], "ok": True, "result": {"threshold": 0.35}}))
    eng.locator("#command-log td.ok", has_text="0.35").wait_for(timeout=10_000)  # the unit's reply, shown
    eng.fill("input[name=threshold]", "7")
    eng.click("text=Set")
    eng.locator("#command-log td.error", has_text="less than or equal to 1").wait_for()
    shot(eng, "unit-commands")
    for _ in range(30):
        unit.result(0.9 if _ % 3 == 0 else 0.2, qos=1)
    eng.goto(f"{console.url}/reports?by=hour")
    def reported() -> bool:
        eng.reload()
        return ">line3-b<" in eng.content()

    assert until(reported, 15), "the results reach the reports"
    rate = eng.evaluate("() => { const c = document.getElementById('chart-rate').chart; "
                        "return {x: c.data[0], series: c.series.map(s => s.label), time: c.scales.x.time}; }")
    assert rate["series"][1:] == ["line3-b"] and rate["time"] and len(rate["x"]) >= 1, rate
    shot(eng, "reports")
    csv_text = eng.request.get(f"{console.url}/reports/defect_rate.csv?by=day").text()
    header, row = csv_text.splitlines()[:2]
    assert header == "period,unit,frames,defective,rate" and ",line3-b,30,10,0.3333" in row
    eng.goto(f"{console.url}/audit")
    assert "threshold" in eng.locator("table.log").first.inner_text()
    assert "refused" in eng.locator("table.log").nth(1).inner_text(), "the refusals are audited"
    shot(eng, "audit")
    pub.close()


def test_logins_are_limited_and_admins_manage_users(browser: Any, console: ConsoleProc) -> None:
    page = browser.new_page()
    for _ in range(5):
        page.goto(f"{console.url}/login")
        page.fill("input[name=name]", "admin")
        page.fill("input[name=password]", "guess")
        page.click("button[type=submit]")
        assert "Wrong user name or password" in page.content()
    page.goto(f"{console.url}/login")
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", PASSWORD)  # right, but too late
    page.click("button[type=submit]")
    assert "Too many failed logins" in page.content()

    # From another address (the console trusts X-Forwarded-For from its local reverse proxy): another user logs in,
    # while the limited user stays limited from anywhere.
    elsewhere = browser.new_context(extra_http_headers={"X-Forwarded-For": "10.0.0.9"})
    eng = login(elsewhere, console, "eng")
    assert eng.request.get(f"{console.url}/users").status == 403
    other = elsewhere.new_page()
    other.goto(f"{console.url}/login")
    other.fill("input[name=name]", "admin")
    other.fill("input[name=password]", PASSWORD)
    other.click("button[type=submit]")
    assert "Too many failed logins" not in other.content() and other.url.rstrip("/") == console.url, \
        "wrong passwords from one address do not lock the user out everywhere"
    eng.goto(f"{console.url}/audit")
    assert "login_limited" in eng.content() and "login_failed" in eng.content()
    elsewhere.close()


def test_review_by_keyboard_persists_and_reaches_the_unit(browser: Any, tmp_path: Path, broker: Broker) -> None:
    console = ConsoleProc(tmp_path / "console", broker.port).start()
    pub = sim(broker)
    unit = SimUnit(pub.client, "line4")
    try:
        unit.online()
        keys = [unit.alert(unit.result(0.9, qos=1)) for _ in range(9)]
        page = login(browser, console, "op")
        page.goto(f"{console.url}/review")
        assert until(lambda: "9 waiting" in fresh(page), 15)
        shot(page, "review")
        page.keyboard.press("n")
        page.keyboard.type("porosity near the hub?")
        page.keyboard.press("Enter")  # used to record "right", the form's first button
        assert page.locator("#note").input_value() == "porosity near the hub?" and "9 waiting" in page.content()
        loads: list[str] = []
        page.on("request", lambda r: loads.append(r.url) if r.resource_type == "document" else None)
        for key, left in (("1", 8), ("2", 7), ("3", 6), *(("4", n) for n in range(5, 0, -1))):  # 4: unsure
            page.keyboard.press(key)
            page.locator("#waiting", has_text=f"{left} waiting").wait_for(timeout=10_000)
        # A key pressed as soon as the next item showed, before htmx had taken up its form, submitted it natively.
        assert loads == [], f"each verdict brings the next item in place, however soon the key comes: {loads}"
        assert pub.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/cmd/feedback")]) == 3, 10), \
            "right, wrong (good) and wrong (defective) each tell the unit"
        labels = [json.loads(p)["label"] for p in pub.on("/cmd/feedback")]
        assert labels == ["defective", "good", "defective"]
        for p in pub.on("/cmd/feedback"):  # the unit answers, as a real one does
            body = json.loads(p)
            pub.publish("defect-edge/line4/cmd/feedback/reply", json.dumps({
                "schema": 1, "device_id": "line4", "ts": "2026-11-28T03:00:00.000Z", "command": "feedback",
                "request_id": body["request_id"], "ok": True, "result": {"frame_id": body["frame_id"]}}))
        r = page.request.post(f"{console.url}/units/line4/commands/threshold",
                              form={"csrf": page.locator("input[name=csrf]").first.get_attribute("value"),
                                    "threshold": "0.1"})
        assert r.status == 403, "an operator reviews but does not change thresholds"
        assert console.stop() == 0
        console.start()
        page = login(browser, console, "op")
        page.goto(f"{console.url}/review")
        assert "1 waiting" in page.content(), "the reviews survived a restart"
        page.goto(f"{console.url}/review?state=reviewed")
        assert page.locator("text=reviewed unsure by op").count() == 1, "the latest reviewed first"
        eng = login(browser, console, "eng")
        eng.goto(f"{console.url}/audit")
        def replied() -> bool:
            eng.reload()
            text = eng.locator("table.log").first.inner_text()
            return text.count("feedback") == 3 and "no reply" not in text

        assert until(replied, 15), eng.locator("table.log").first.inner_text()
        assert len(keys) == 9
    finally:
        pub.close()
        console.kill()


def test_inspect_a_photo_and_its_heatmap(browser: Any, tmp_path: Path, broker: Broker) -> None:
    import cv2

    from converter import synth

    console = ConsoleProc(tmp_path / "console", broker.port, models_dir=REPO / "models").start()
    try:
        part = tmp_path / "part_with_a_crack.png"
        cv2.imwrite(str(part), synth.render(4, 2, size=300, defect="crack").image[:, :, ::-1])
        page = login(browser, console, "op")
        page.goto(f"{console.url}/inspect")
        page.select_option("select[name=model]", "mobilenetv2")
        page.set_input_files("input[name=files]", str(part))
        page.click("#upload button[type=submit]")
        page.locator("td.p_defect").wait_for()
        assert page.locator("td.defective strong").inner_text() == "defective"
        cli = subprocess.run([str(Path(sys.executable).parent / "defect-edge"), "classify", str(part), "--json",
                              "--models-dir", str(REPO / "models")], capture_output=True, text=True, timeout=120)
        expected = json.loads(cli.stdout.splitlines()[0])["p_defect"]
        assert abs(float(page.locator("td.p_defect").inner_text()) - expected) <= 1e-6, "the unit's own call"
        csv_text = page.request.get(console.url + page.locator("a", has_text="CSV").get_attribute("href")).text()
        assert csv_text.splitlines()[1].startswith("part_with_a_crack.png,mobilenetv2,defective,")
        page.click("text=Show heatmap")
        page.locator("img.heat").wait_for(timeout=180_000)  # the first heatmap starts TensorFlow in a worker
        assert until(lambda: page.locator("img.heat").evaluate("i => i.complete && i.naturalWidth") > 0, 30)
        shot(page, "inspect")
    finally:
        console.kill()


@pytest.fixture(scope="session")
def models_dir_committed() -> Path:
    return REPO / "models"



def test_a_live_stream_ends_when_its_user_is_disabled_and_when_the_console_stops(tmp_path: Path,
                                                                                  broker: Broker) -> None:
    """Before: an open /live kept flowing after its user was disabled, and SIGTERM with a stream open took 3.6 s and
    logged a traceback."""
    import threading
    import time
    import urllib.parse
    import urllib.request
    from http.cookiejar import CookieJar

    console = ConsoleProc(tmp_path / "console", broker.port).start()
    try:
        def signed_in(name: str) -> urllib.request.OpenerDirector:
            web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
            body = urllib.parse.urlencode({"name": name, "password": PASSWORD, "next": "/"}).encode()
            assert web.open(f"{console.url}/login", data=body, timeout=10).url.rstrip("/") == console.url
            return web

        def follow(web: urllib.request.OpenerDirector, lines: list[str], ended: threading.Event) -> None:
            with web.open(f"{console.url}/live", timeout=30) as r:
                for raw in r:
                    lines.append(raw.decode().strip())
            ended.set()

        viewer, admin = signed_in("view"), signed_in("admin")
        lines: list[str] = []
        ended = threading.Event()
        threading.Thread(target=follow, args=(viewer, lines, ended), daemon=True).start()
        assert until(lambda: ": live" in lines, 10)
        m = re.search(r'name="csrf" value="([^"]+)"', admin.open(f"{console.url}/users").read().decode())
        assert m
        admin.open(f"{console.url}/users", data=urllib.parse.urlencode({
            "csrf": m.group(1), "action": "role", "name": "view", "role": "viewer", "disabled": "1"}).encode())
        assert ended.wait(5) and "event: signed-out" in lines, lines

        open_lines: list[str] = []
        threading.Thread(target=follow, args=(admin, open_lines, threading.Event()), daemon=True).start()
        assert until(lambda: ": live" in open_lines, 10)
        t = time.monotonic()
        assert console.stop() == 0
        took = time.monotonic() - t
        assert took < 2.5, f"SIGTERM with a live stream open took {took:.1f} s"
        assert "Traceback" not in console.log(), console.log()[-2000:]
    finally:
        console.kill()


def test_sessions_end_in_the_browser_on_disable_sign_out_everywhere_and_logout(browser: Any,
                                                                            console: ConsoleProc) -> None:
    """Revocation as people meet it: an admin disables a user on the Users page, and that user's open page (its live
    stream) goes to the login within the stream's 2 s recheck, while a copy of the session's cookie on another
    browser opens nothing, even after the user is enabled again. "Sign out everywhere" and a logout do the same."""

    def other_browser(page: Any) -> Any:
        """The session's cookie, copied to another browser: a second device, or a stolen cookie."""
        ctx = browser.new_context()
        ctx.add_cookies(page.context.cookies())
        return ctx.new_page()

    def refused(page: Any, path: str = "/") -> bool:
        page.goto(f"{console.url}{path}")
        return "/login" in page.url

    view = login(browser, console, "view")  # the fleet page, its live stream open
    copy = other_browser(view)
    assert not refused(copy), "the copied cookie is the same session while it lasts"
    admin = login(browser, console, "admin")
    admin.goto(f"{console.url}/users")
    row = admin.locator("tr", has=admin.locator('input[name=name][value="view"]')).first
    row.locator("input[name=disabled]").check()
    row.locator("button", has_text="Save").click()
    view.wait_for_url("**/login?next=%2F", timeout=6_000)  # the open page left for the login, by itself
    assert refused(copy)
    admin.goto(f"{console.url}/users")
    row = admin.locator("tr", has=admin.locator('input[name=name][value="view"]')).first
    row.locator("input[name=disabled]").uncheck()
    row.locator("button", has_text="Save").click()
    assert refused(copy), "enabled again, the user's old sessions stay ended"
    assert not refused(login(browser, console, "view")), "a new login works"

    eng = login(browser, console, "eng")
    eng_elsewhere = other_browser(eng)
    eng_elsewhere.goto(f"{console.url}/alerts")  # another page with a live stream, on the other device
    eng.goto(f"{console.url}/account")
    eng.locator("button", has_text="Sign out everywhere").click()
    eng_elsewhere.wait_for_url("**/login?next=%2Falerts", timeout=6_000)
    assert refused(eng) and refused(eng_elsewhere)

    op = login(browser, console, "op")
    op_copy = other_browser(op)
    op.locator("form.who button").click()  # log out
    assert "/login" in op.url and refused(op_copy, "/review"), "a logout ends the session, not only this cookie"
    assert not admin.dialogs and not view.dialogs


def test_the_pages_read_at_phone_width_and_desktop_with_parts(browser: Any, console: ConsoleProc,
                                                              broker: Broker) -> None:
    """Before, at 390 px the header overlapped and tables overflowed the page. Every page fits the phone's width
    (a wide table scrolls inside itself); screenshots of each at phone and desktop width."""
    pub = sim(broker)
    unit = SimUnit(pub.client, "line7")
    unit.online()
    unit.status(release={"name": "casting", "version": 4, "state": "shadow", "since": time.time() - 300,
                         "shadow": {"share": 0.25, "offered": 1210, "compared": 301, "skipped_busy": 1, "errors": 0,
                                    "agreement": 0.9668, "dp": {"mean": -0.004, "p5": -0.12, "p50": 0.0,
                                                                "p95": 0.09, "max_abs": 0.62},
                                    "inference_ms": {"p50": 4.1, "p95": 5.3}, "ng_rate": 0.087,
                                    "ood": {"mean": 0.61, "unfamiliar": 2},
                                    "disagreements": [f"line7-1795660000-{i:09d}" for i in (12, 57, 230)]},
                         "variants": [{"quantization": "int8", "verified": True, "latency_ms": 21.4, "memory_mb": 31,
                                       "agreement": 0.9969, "chosen": True, "reason": "chosen: the fastest here"},
                                      {"quantization": "float16", "verified": True, "latency_ms": 48.9,
                                       "memory_mb": 62, "agreement": 1.0, "chosen": False,
                                       "reason": "slower here: 48.90 ms against 21.40 ms"},
                                      "<not a row>"]},
                variants=[{"quantization": "float32", "verified": False, "verify": "<b>FAILED</b>: drift 0.4",
                           "chosen": False}, {"quantization": "int8", "verified": True, "latency_ms": 20.0,
                                              "memory_mb": 30.0, "agreement": 0.99, "chosen": True,
                                              "reason": "chosen: the fastest here that passed"}])
    unit.metrics(12.0)
    for verdict in ["ok"] * 9 + ["ng", "ok", "unsure", "ng", "ok", "missed", "ok"]:
        part = unit.part(verdict)
        if verdict in ("ng", "unsure") and part.frame_id:
            unit.alert(part.frame_id, p_defect=part.p_defect or 0.9, part_id=part.part_id)
    page = login(browser, console, "admin")
    page.locator('tr[data-unit="line7"] [data-defective]', has_text="of 16 parts").wait_for(timeout=15_000)
    page.goto(f"{console.url}/rollouts")  # a rollout started from its form: the canary is asked at once
    page.fill("input[name=model]", "casting")
    page.fill("input[name=units]", "line*")
    page.click("form.rollout-form button[type=submit]")
    page.wait_for_url(re.compile(r"/rollouts/[0-9a-f]+$"))
    rollout = page.url.removeprefix(console.url)
    assert pub.wait(lambda m: any(t.endswith("/line7/cmd/release") for t, _, _ in m), 15), "the canary is asked"
    for width, height, name in ((390, 844, "phone"), (1280, 860, "desktop")):
        page.set_viewport_size({"width": width, "height": height})
        for path, shot_name in (("/", "fleet"), ("/units/line7", "unit"), ("/reports?by=shift", "reports"),
                                ("/review", "review"), ("/alerts", "alerts"), ("/rollouts", "rollouts"),
                                (rollout, "rollout")):
            page.goto(f"{console.url}{path}")
            if shot_name == "unit":  # what the unit timed: the model's variants, and the release's in shadow
                tables = page.locator("table.variants")
                assert tables.count() == 2 and "int8 runs" in tables.nth(0).inner_text()
                assert "refused: <b>FAILED</b>" in tables.nth(0).inner_text(), "a unit's words are shown as text"
                assert "48.90 ms" in tables.nth(1).inner_text() and tables.nth(1).locator("tr").count() == 3
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} at {width} px is {overflow} px too wide"
            shot(page, f"{shot_name}-{name}")
    pub.close()


def test_alerts_pick_a_unit_mark_what_is_new_update_live_and_link_to_their_review(
        browser: Any, console: ConsoleProc, broker: Broker) -> None:
    pub = sim(broker)
    units = [SimUnit(pub.client, name) for name in ("line1", "line2")]
    for u in units:
        u.online()
        u.alert(u.result(0.9, qos=1))
    page = login(browser, console, "op")
    page.goto(f"{console.url}/alerts")
    assert until(lambda: fresh(page).count("new</strong>") == 0 and "line2" in page.content(), 15), \
        "the first look at the page: everything is as new as the look itself"
    assert page.locator("select[name=unit] option").all_inner_texts() == ["all", "line1", "line2"]
    page.goto(f"{console.url}/alerts")  # a second look: nothing new since
    assert page.locator("strong.new-mark").count() == 0
    frame = units[0].result(0.95, qos=1)
    units[0].alert(frame)
    page.locator("tr.new", has_text="line1").wait_for(timeout=10_000)  # arrives without a reload, marked new
    page.locator("tr.new a", has_text="review").click()
    page.wait_for_url(re.compile(r"/review\?"))
    assert page.locator(f'[data-frame="{frame}"]').count() >= 1, "the link opens that alert's review item"
    pub.close()
