"""A release on a running unit, commanded over MQTT as the console or an engineer would: fetched from a real console
process's repository, run in shadow on live frames of casting photos, promoted, and rolled back by the unit itself
when its rate of defective calls departs from what its shadow run measured; a candidate that fails its parity proof
never touches the active model."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import release
from harness.broker import Broker, Collector
from harness.console import ConsoleProc
from harness.daemon import BASE, Daemon, config
from harness.data import casting_sample, link_into
from harness.releases import break_verification, model_copy

pytestmark = pytest.mark.processes
MODEL = "mobilenetv2"


@pytest.fixture
def line(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker, casting: Path, daemons: list[Daemon]
         ) -> Iterator[tuple[release.Repo, Daemon, Collector, Path, ConsoleProc]]:
    """A unit taking releases from a console process, over HTTP, or (parametrized ``"mqtt"``) through the broker."""
    repo = release.init(tmp_path / "repo", tmp_path / "keys")
    console = ConsoleProc(tmp_path / "console", broker.port, releases_dir=repo.path).start()
    models = model_copy(tmp_path / "models", "active").parent
    c = Collector(broker.port, f"{BASE}/#")
    d = Daemon(tmp_path / "unit", config(
        tmp_path, broker.port, models, model={"name": MODEL},
        camera={"source": str(link_into(casting_sample(40), tmp_path / "photos")), "fps": 10, "loop": True},
        releases={"url": "mqtt://defect-console" if getattr(request, "param", "http") == "mqtt"
                  else f"{console.url}/releases", "root_file": str(repo.metadata / "1.root.json"),
                  "shadow_share": 0.5, "watch_results": 400},
        alerts={"on_defect": False, "on_low_confidence": False, "on_unfamiliar": False}))
    daemons.append(d.start())
    try:
        assert c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 60), d.log()
        yield repo, d, c, models, console
    finally:
        c.close()
        console.kill()


def command(c: Collector, name: str, body: dict[str, Any]) -> dict[str, Any]:
    before = len(c.on(f"/cmd/{name}/reply"))
    c.publish(f"{BASE}/cmd/{name}", json.dumps(body))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith(f"/cmd/{name}/reply")]) > before, 30)
    reply: dict[str, Any] = json.loads(c.on(f"/cmd/{name}/reply")[before])
    return reply


def release_status(c: Collector) -> dict[str, Any]:
    statuses = c.on("/status")
    return json.loads(statuses[-1]).get("release") or {} if statuses else {}


def wait_state(c: Collector, d: Daemon, state: str, timeout: float = 120) -> dict[str, Any]:
    assert c.wait(lambda m: release_status(c).get("state") == state, timeout), (release_status(c), d.log()[-3000:])
    return release_status(c)


def test_shadow_promote_and_a_rollback_the_unit_decides_itself(
        line: tuple[release.Repo, Daemon, Collector, Path, ConsoleProc], tmp_path: Path) -> None:
    repo, d, c, models, _ = line
    release.publish(repo, model_copy(tmp_path / "v1", "release 1"))
    r = command(c, "release", {"name": MODEL})
    assert r["ok"] and r["result"]["state"] == "offered", r
    wait_state(c, d, "shadow")

    def shadow() -> dict[str, Any]:  # republished with each metrics beat while the shadow runs
        return release_status(c).get("shadow") or {}

    assert c.wait(lambda m: (shadow().get("compared") or 0) >= 20, 60), release_status(c)
    s = shadow()
    assert s["compared"] >= 20 and s["errors"] == 0, s
    assert s["agreement"] == 1.0 and s["dp"]["max_abs"] == 0.0, "the same model on the same pixels agrees exactly"
    assert s["inference_ms"]["p50"] > 0 and 0.3 < s["compared"] / s["offered"] <= 0.55, s
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "active", "shadow touches nothing"

    r = command(c, "promote", {})
    assert r["ok"] and r["result"]["state"] == "promoted", r
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "release 1"
    # The line changes under the promoted model: its calls depart from what its shadow run measured.
    ng = s["ng_rate"]
    asked = time.time()
    assert command(c, "threshold", {"threshold": 1.0 if ng >= 0.5 else 0.0})["ok"]
    rolled = wait_state(c, d, "rolled_back", 60)
    assert "against" in rolled["reason"] and "in its shadow run" in rolled["reason"], rolled
    assert rolled["since"] - asked < 30
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "active", "the old files are back"
    assert command(c, "threshold", {"reset": True})["ok"]

    # A release that fails its parity proof here is refused; the active model was never touched.
    broken = model_copy(tmp_path / "v2", "release 2")
    break_verification(broken)
    release.publish(repo, broken)
    before = json.loads(c.on("/status")[-1])["model"]["sha256"]
    assert command(c, "release", {"name": MODEL})["ok"]
    failed = wait_state(c, d, "failed")
    assert failed["version"] == 2 and "FAILED" in failed["reason"], failed
    assert json.loads(c.on("/status")[-1])["model"]["sha256"] == before
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "active"
    for name in ("promote", "rollback"):
        r = command(c, name, {})
        assert not r["ok"] and "nothing to" in r["error"], r
    assert d.alive()


def test_a_different_candidate_sends_its_disagreements_to_review_and_can_be_rejected(
        line: tuple[release.Repo, Daemon, Collector, Path, ConsoleProc], tmp_path: Path) -> None:
    repo, d, c, models, _ = line
    release.publish(repo, model_copy(tmp_path / "cnn", "cnn 1", name="cnn"))
    assert command(c, "release", {"name": "cnn"})["ok"]
    wait_state(c, d, "shadow")
    assert c.wait(lambda m: len((release_status(c).get("shadow") or {}).get("disagreements") or []) >= 3, 90), \
        release_status(c)
    s = release_status(c)["shadow"]
    assert s["agreement"] < 1.0 and s["dp"]["max_abs"] > 0.0, s
    snapshots = {t.rsplit("/", 1)[1] for t, _, _ in c.messages if "/snapshot/" in t}
    assert set(s["disagreements"]) <= snapshots, "each disagreement's snapshot went out, for the review queue"
    r = command(c, "reject", {})
    assert r["ok"] and r["result"]["state"] == "rejected"
    assert release_status(c)["state"] == "rejected" and release_status(c)["shadow"]["compared"] >= s["compared"]
    assert json.loads(c.on("/status")[-1])["model"]["name"] == MODEL
    assert not (models / "cnn.json").exists(), "a rejected candidate was never installed"


def test_the_console_and_the_broker_going_away_mid_rollout_leave_the_unit_on_a_working_model(
        line: tuple[release.Repo, Daemon, Collector, Path, ConsoleProc], tmp_path: Path, broker: Broker) -> None:
    repo, d, c, models, console = line
    release.publish(repo, model_copy(tmp_path / "v1", "release 1"))
    assert command(c, "release", {"name": MODEL})["ok"]
    wait_state(c, d, "shadow")
    active = json.loads(c.on("/status")[-1])["model"]["sha256"]

    def results() -> int:
        return len(c.on("/result"))

    def classifying(more: int = 20, timeout: float = 60) -> bool:
        n = results()
        return c.wait(lambda m: results() >= n + more, timeout)

    console.kill()  # the repository is gone mid-rollout
    assert classifying(), d.log()[-2000:]
    assert release_status(c)["state"] == "shadow" and json.loads(c.on("/status")[-1])["model"]["sha256"] == active
    r = command(c, "promote", {})  # what was fetched is all a promotion needs
    assert r["ok"] and r["result"]["state"] == "promoted", r
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "release 1"
    broker.stop()  # and the broker too, for a while: the unit keeps judging with the promoted model
    time.sleep(3)
    broker.start()
    assert classifying(), d.log()[-2000:]
    assert release_status(c)["state"] == "promoted"
    assert command(c, "release", {"name": MODEL})["ok"]  # a new release with the repository still away
    failed = wait_state(c, d, "failed", 60)
    assert "cannot download" in failed["reason"], failed
    assert classifying(), "still judging, with the model it had"
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "release 1"
    assert d.alive()


def test_a_rollout_goes_from_the_canary_to_the_fleet_with_its_disagreements_in_review(
        tmp_path: Path, broker: Broker, casting: Path, daemons: list[Daemon], browser: Any) -> None:
    """Three real units running MobileNetV2 on casting photos, a rollout of another model (the CNN) started from
    the console's page: the canary first, then the other two, each fetched, proven, shadowed and promoted by the
    gates; the frames where the candidate disagreed are in the review queue. Screenshots: rollout-fleet-*.png."""
    from harness.browser import DESKTOP, PHONE, shot
    from harness.console import PASSWORD

    repo = release.init(tmp_path / "repo", tmp_path / "keys")
    release.publish(repo, model_copy(tmp_path / "cnn", "cnn 1", name="cnn"))
    console = ConsoleProc(tmp_path / "console", broker.port, releases_dir=repo.path).start()
    photos = link_into(casting_sample(30), tmp_path / "photos")
    try:
        for i in range(3):
            unit = tmp_path / f"unit{i}"
            models = model_copy(unit / "models", "active").parent
            cfg = config(unit, broker.port, models, device={"id": f"press{i}"}, model={"name": MODEL},
                         camera={"source": str(photos), "fps": 4, "loop": True},
                         releases={"url": f"{console.url}/releases", "root_file": str(repo.metadata / "1.root.json"),
                                   "shadow_share": 1.0, "watch_results": 10},
                         alerts={"on_defect": False, "on_low_confidence": False, "on_unfamiliar": False})
            daemons.append(Daemon(unit / "d", cfg).start())
        page = browser.new_page(viewport=DESKTOP)
        page.goto(f"{console.url}/rollouts")
        page.fill("input[name=name]", "eng")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{console.url}/rollouts")
        page.goto(f"{console.url}/")  # the console has heard of all three before a rollout picks them
        for i in range(3):
            page.locator(f'tr[data-unit="press{i}"]').wait_for(timeout=120_000)
        page.goto(f"{console.url}/rollouts")
        page.fill("input[name=model]", "cnn")
        page.fill("input[name=units]", "press*")
        page.fill("input[name=min_compared]", "8")
        page.fill("input[name=min_agreement]", "0")
        page.click("form.rollout-form button[type=submit]")
        page.wait_for_url(re.compile(r"/rollouts/[0-9a-f]+$"))
        url = page.url

        def state() -> str:
            page.goto(url)
            return str(page.locator("#rollout-state").inner_text())

        deadline = time.monotonic() + 240
        seen: set[str] = set()
        while state() not in ("done", "aborted") and time.monotonic() < deadline:
            rows = {r.get_attribute("data-unit"): r.inner_text() for r in page.locator("#rollout-units tbody tr").all()}
            if "shadow" in rows.get("press0", "") and "waiting" in rows.get("press2", ""):
                seen.add("canary in shadow, the fleet waiting")
                shot(page, "rollout-fleet-canary-desktop")
            time.sleep(1.0)
        assert state() == "done", (page.content()[-3000:], console.log()[-2000:])
        assert seen, "the canary went first"
        for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.goto(url)
            shot(page, f"rollout-fleet-done-{width}")
        assert page.locator("#rollout-units tbody tr").count() == 3
        assert page.locator(".release-state.promoted").count() == 3
        page.goto(f"{console.url}/review?unit=press0&kind=sample")
        assert page.locator("#current").count() == 1, "the canary's disagreements are in the review queue"
        shot(page, "rollout-fleet-review-phone")
    finally:
        console.kill()


def test_a_release_with_variants_runs_the_one_this_unit_timed_in_shadow_and_installs_it(
        line: tuple[release.Repo, Daemon, Collector, Path, ConsoleProc], casting_model: Path) -> None:
    """The casting model, converted with every variant that met parity: the unit times them as it prepares the
    release, shadows the one it would run, and promotes exactly that one; its status names the table."""
    repo, d, c, models, _ = line
    release.publish(repo, casting_model.with_suffix(""), with_h5=False)
    assert command(c, "release", {"name": "casting"})["ok"]
    s = wait_state(c, d, "shadow", 180)
    timed = s.get("variants") or []
    chosen = [v for v in timed if v["chosen"]]
    assert len(timed) >= 2 and len(chosen) == 1 and all(v["latency_ms"] for v in timed if v["verified"]), s
    r = command(c, "promote", {})
    assert r["ok"] and r["result"]["state"] == "promoted", r
    installed = json.loads((models / "casting.json").read_text())
    assert installed["quantization"] == chosen[0]["quantization"] and "variants" not in installed
    assert c.wait(lambda m: (json.loads(c.on("/status")[-1])["model"].get("variants") or []) == timed, 30), \
        json.loads(c.on("/status")[-1])["model"]
    assert json.loads(c.on("/status")[-1])["model"]["name"] == "casting" and d.alive()


@pytest.mark.parametrize("line", ["mqtt"], indirect=True)
def test_a_unit_that_reaches_only_the_broker_shadows_and_promotes_a_release_taken_through_it(
        line: tuple[release.Repo, Daemon, Collector, Path, ConsoleProc], tmp_path: Path) -> None:
    repo, d, c, models, _ = line
    release.publish(repo, model_copy(tmp_path / "v1", "release 1"))
    assert command(c, "release", {"name": MODEL})["ok"]
    wait_state(c, d, "shadow")
    r = command(c, "promote", {})
    assert r["ok"] and r["result"]["state"] == "promoted", r
    assert json.loads((models / f"{MODEL}.json").read_text())["created_at"] == "release 1"
    assert d.alive()
