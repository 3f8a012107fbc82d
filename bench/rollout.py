"""Models to the fleet, measured: what a shadow costs the line, fetching and installing at fleet scale, the refusals
and the resume, and how fast a unit rolls itself back.

1. ``shadow_fps_ratio``: frames/s of the pipeline replaying casting photos as fast as it can with a candidate judging
   25 % of them in shadow ÷ without; same model both, the active on every core (2 here), the candidate on one as
   the unit runs it; alternated three times and the medians taken. Target >= 0.85.
2. ``install_s_20_units``: 20 units (threads in one process, each with its own state and models folder) fetching a
   3.6 MB release from one repository server, verifying it (TUF) and re-proving its parity, all done.
   ``rollout_s_20_units``: 20 real units (``defect-edge run`` processes at 5 fps of casting photos) and a console
   process on one broker; a rollout started on the console (canary 1, factor 2: waves of 1, 2, 4, 8, 5; promoted by
   the gates after 5 frames in shadow; each promotion watched for 10 results): from its start to done. Target <= 60.
3. ``download_resume_ok``: a download cut after 1 MB resumes from there, and the release installs.
4. ``tampered_refused``: a flipped byte, a foreign key, an older version replayed and an expired timestamp are each
   refused, naming what they are.
5. ``rollback_s``: a running unit (its own process, 10 fps of casting photos), promoted, whose calls then depart from
   its shadow run's: from the departure's start to the old model active again (it needs ``min_results`` results to
   see it). Target <= 10.

The repository is served by Starlette's StaticFiles under uvicorn, as the console serves it. Run:
``.venv/bin/python -m bench.rollout``. The last line is one JSON object.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from converter import release
from core.classifier import Classifier
from edge.pipeline import Pipeline, Result
from edge.releases import ReleaseError, Releases, ResumingFetcher
from edge.shadow import Shadow
from edge.sources.base import Camera
from edge.sources.replay import FolderReplay
from harness import REPO
from harness.data import casting_sample, link_into
from harness.releases import flipped_byte, forged_timestamp, model_copy

MODEL = "mobilenetv2"


@contextmanager
def served(folder: Path) -> Iterator[str]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from harness.broker import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Mount("/", StaticFiles(directory=str(folder)))]),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


def pipeline_fps(paths: list[Path], share: float) -> float:
    manifest = REPO / "models" / f"{MODEL}.json"
    pipe = Pipeline(Camera(FolderReplay(paths)), Classifier(manifest), device_id="bench", queue_size=2,
                    drop_when_behind=False)
    shadow = Shadow(Classifier(manifest, num_threads=1), share, lambda *_: None) if share else None  # as the unit
    count = 0

    def done(r: Result) -> None:
        nonlocal count
        count += 1
        if shadow is not None:
            shadow.offer(r.frame_id, r.frame.image, r.crop, r.prediction)

    t = time.perf_counter()
    pipe.run(threading.Event(), done)
    fps = count / (time.perf_counter() - t)
    if shadow is not None:
        shadow.stop()
        print(f"  shadow: {shadow.report()['compared']} compared, {shadow.skipped} skipped while busy")
    return fps


class CutOnce(ResumingFetcher):
    """Cuts the first target download after ``cut`` bytes, as a restart or a dropped link would."""

    def __init__(self, partial: Path, cut: int):
        super().__init__(partial)
        self.cut, self.done = cut, False

    def _resume(self, r: Any, part: Path, have: int) -> Iterator[bytes]:
        sent = 0
        for chunk in super()._resume(r, part, have):
            if not self.done and sent + len(chunk) > self.cut:
                self.done = True
                from tuf.api import exceptions

                raise exceptions.DownloadError("cut by the bench")
            sent += len(chunk)
            yield chunk


def tamper_cases(repo: release.Repo, url: str, work: Path) -> dict[str, bool]:
    def refused(name: str, words: str, unit: Releases | None = None) -> bool:
        unit = unit or Releases(url, repo.metadata / "1.root.json", work / name)
        try:
            unit.install(MODEL, work / name / "models")
        except ReleaseError as e:
            return words in str(e) and not (work / name / "models" / f"{MODEL}.json").exists()
        return False

    out = {}
    release.publish(repo, model_copy(work / "v2", "v2"))
    with flipped_byte(next((repo.path / "targets" / f"models/{MODEL}/2").glob(f"*.{MODEL}.tflite"))):
        out["flipped_byte"] = refused("flipped", "length or sha256")
    saved = (repo.metadata / "timestamp.json").read_bytes()
    with forged_timestamp(repo):
        out["foreign_key"] = refused("forged", "not signed by the keys")
    seen = Releases(url, repo.metadata / "1.root.json", work / "seen")
    seen.fetch(MODEL)
    release.publish(repo, model_copy(work / "v3", "v3"))
    seen.fetch(MODEL)
    newest = (repo.metadata / "timestamp.json").read_bytes()
    (repo.metadata / "timestamp.json").write_bytes(saved)
    out["older_replayed"] = refused("seen", "older version", seen)
    (repo.metadata / "timestamp.json").write_bytes(newest)
    release.refresh(repo, days=-1)
    out["expired"] = refused("expired", "expired metadata")
    release.refresh(repo)
    return out


def rollback_seconds(repo: release.Repo, url: str, work: Path) -> float:
    from harness.broker import Broker, Collector
    from harness.daemon import BASE, Daemon, config

    broker = Broker(work / "broker").start()
    models = model_copy(work / "active", "active").parent
    d = Daemon(work / "unit", config(
        work, broker.port, models, model={"name": MODEL},
        camera={"source": str(link_into(casting_sample(40), work / "photos")), "fps": 10, "loop": True},
        releases={"url": url, "root_file": str(repo.metadata / "1.root.json"), "shadow_share": 0.5},
        alerts={"on_defect": False, "on_low_confidence": False, "on_unfamiliar": False})).start()
    c = Collector(broker.port, f"{BASE}/#")
    try:
        def state() -> dict[str, Any]:
            s = c.on("/status")
            return (json.loads(s[-1]).get("release") or {}) if s else {}

        def ask(name: str, body: dict[str, Any]) -> None:
            n = len(c.on(f"/cmd/{name}/reply"))
            c.publish(f"{BASE}/cmd/{name}", json.dumps(body))
            c.wait(lambda m: len([1 for t, _, _ in m if t.endswith(f"/cmd/{name}/reply")]) > n, 30)

        c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 60)
        ask("release", {"name": MODEL})
        c.wait(lambda m: (state().get("shadow") or {}).get("compared", 0) >= 30, 120)
        ng = state()["shadow"]["ng_rate"]
        ask("promote", {})
        began = time.time()
        ask("threshold", {"threshold": 1.0 if ng >= 0.5 else 0.0})
        if not c.wait(lambda m: state().get("state") == "rolled_back", 60):
            raise RuntimeError(f"no rollback: {state()}\n{d.log()[-2000:]}")
        print(f"  rolled back: {state()['reason']}")
        return float(state()["since"]) - began
    finally:
        c.close()
        d.stop()
        broker.stop()


def rollout_seconds(repo: release.Repo, work: Path, units: int = 20) -> float:
    from sqlalchemy import text

    from console import config as console_config
    from console.store import db, rollouts
    from harness.broker import Broker
    from harness.console import ConsoleProc
    from harness.daemon import Daemon, config

    broker = Broker(work / "broker").start()
    console = ConsoleProc(work / "console", broker.port, releases_dir=repo.path).start()
    photos = link_into(casting_sample(30), work / "photos")
    daemons = []
    try:
        for i in range(units):
            unit = work / f"unit{i}"
            models = model_copy(unit / "models", "active").parent
            daemons.append(Daemon(unit / "d", config(
                unit, broker.port, models, device={"id": f"press{i:02d}"}, model={"name": MODEL, "threads": 1},
                camera={"source": str(photos), "fps": 5, "loop": True}, metrics={"interval_s": 1},
                releases={"url": f"{console.url}/releases", "root_file": str(repo.metadata / "1.root.json"),
                          "shadow_share": 1.0, "watch_results": 10},
                alerts={"on_defect": False, "on_low_confidence": False, "on_unfamiliar": False})).start())
        engine = db.engine_for(console_config.load(console.config).database_url())
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # every unit heard by the console, running
            with engine.connect() as conn:
                known = conn.execute(text("SELECT count(*) FROM units WHERE status IS NOT NULL")).scalar()
            if known == units:
                break
            time.sleep(1)
        print(f"  {units} units running")
        began = time.time()
        rid = rollouts.create(engine, model=MODEL, version=None, units="press*", canary=1, factor=2.0,
                              auto_promote=True, min_compared=5, min_agreement=0.9, user="bench")
        while time.monotonic() < deadline:
            r = rollouts.get(engine, rid)
            assert r is not None
            if r["state"] != "running":
                break
            time.sleep(0.5)
        took = time.time() - began
        print(f"  rollout {r['state']} {r['reason']} in {took:.1f} s, {r['waves']} waves")
        if r["state"] != "done":
            raise RuntimeError(f"the rollout ended {r['state']}: {r['reason']}")
        return took
    finally:
        for d in daemons:
            d.kill()
        console.kill()
        broker.stop()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    try:
        paths = casting_sample(400)
        print("1. the pipeline's rate with and without a shadow at 25 %")
        plain, shadowed = [], []
        for _ in range(3):
            plain.append(pipeline_fps(paths, 0.0))
            shadowed.append(pipeline_fps(paths, 0.25))
            print(f"  {plain[-1]:.1f} fps alone, {shadowed[-1]:.1f} with a shadow")
        ratio = statistics.median(shadowed) / statistics.median(plain)

        repo = release.init(work / "repo", work / "keys")
        published = release.publish(repo, model_copy(work / "v1", "v1"))
        with served(repo.path) as url:
            print(f"2. 20 units fetch, verify and install {published.size_bytes / 1e6:.1f} MB")
            errors: list[str] = []

            def one(i: int) -> None:
                try:
                    Releases(url, repo.metadata / "1.root.json", work / f"u{i}").install(
                        MODEL, work / f"u{i}" / "models", threads=1)
                except Exception as e:  # counted and shown: the bench reports, it does not stop
                    errors.append(f"unit {i}: {e}")

            t = time.perf_counter()
            threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            install_s = time.perf_counter() - t
            print(f"  {install_s:.1f} s, {len(errors)} failed {errors[:2]}")

            print("3. a download cut after 1 MB")
            unit = Releases(url, repo.metadata / "1.root.json", work / "cut")
            unit.fetcher = CutOnce(work / "cut" / "partial", 1_000_000)
            try:
                unit.fetch(MODEL)
                resumed_ok = False
            except ReleaseError:
                fetched, report = unit.install(MODEL, work / "cut" / "models")
                resumed_ok = fetched.resumed_bytes >= 900_000 and report.ok
                print(f"  resumed {fetched.resumed_bytes / 1e6:.2f} MB, {report.line()[:80]}")

            print("4. tampering")
            refused = tamper_cases(repo, url, work / "tamper")
            print("  " + ", ".join(f"{k}: {'refused' if v else 'NOT REFUSED'}" for k, v in refused.items()))

            print("5. a unit rolling itself back")
            rollback_s = rollback_seconds(repo, url, work / "rollback")
        print("6. a rollout to 20 units from the console")
        rollout_s = rollout_seconds(repo, work / "fleet")
        result = {"rollout_s_20_units": round(rollout_s, 1), "install_s_20_units": round(install_s, 2),
                  "shadow_fps_ratio": round(ratio, 4), "download_resume_ok": resumed_ok,
                  "tampered_refused": all(refused.values()), "rollback_s": round(rollback_s, 2)}
        print(f"{'key':<22}{'value':>10}{'target':>10}")
        for k, target in (("rollout_s_20_units", "<= 60"), ("install_s_20_units", ""),
                          ("shadow_fps_ratio", ">= 0.85"), ("download_resume_ok", "true"),
                          ("tampered_refused", "true"), ("rollback_s", "<= 10")):
            print(f"{k:<22}{result[k]!s:>10}{target:>10}")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
