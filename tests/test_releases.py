"""Model releases to a unit, as a plant runs them: a TUF repository made by ``defect-convert release``, served by a
real console process, fetched and installed by ``defect-edge models update`` as its own process; every tampering
refused and reported with the models folder untouched; a download killed midway resumed; a rollback with the
repository gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contract.payloads import read_file_part
from converter import release
from edge.releases import ReleaseError, Releases
from harness import REPO
from harness.broker import Broker, Collector
from harness.console import ConsoleProc
from harness.daemon import write_toml
from harness.releases import flipped_byte, forged_timestamp, model_copy
from harness.wait import until

pytestmark = pytest.mark.processes
MODEL = "mobilenetv2"


@pytest.fixture
def plant(tmp_path: Path, broker: Broker) -> Iterator[tuple[release.Repo, ConsoleProc, Path]]:
    repo = release.init(tmp_path / "repo", tmp_path / "keys")
    release.publish(repo, model_copy(tmp_path / "v1", "2026-12-01T00:00:00Z"))
    console = ConsoleProc(tmp_path / "console", broker.port, releases_dir=repo.path).start()
    try:
        yield repo, console, tmp_path
    finally:
        console.kill()


def update(console_url: str, repo: release.Repo, unit: Path, *extra: str, verb: str = "update"
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", "models", verb, MODEL, "--repo", console_url,
                           "--root", str(repo.metadata / "1.root.json"), "--state", str(unit / "state"),
                           "--models-dir", str(unit / "models"), "--keep", "2", *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_unit_takes_releases_keeps_two_and_rolls_back_with_the_repository_gone(
        plant: tuple[release.Repo, ConsoleProc, Path]) -> None:
    repo, console, tmp = plant
    unit, url = tmp / "unit", f"{console.url}/releases"
    r = update(url, repo, unit)
    assert r.returncode == 0, r.stderr
    assert f"{MODEL}: release 1 verified" in r.stdout and "installed" in r.stdout and ": OK:" in r.stdout, r.stdout
    v1 = (unit / "models" / f"{MODEL}.json").read_bytes()
    for n in (2, 3):
        release.publish(repo, model_copy(tmp / f"v{n}", f"2026-12-0{n}T00:00:00Z"))
        r = update(url, repo, unit)
        assert r.returncode == 0 and f"release {n} verified" in r.stdout, r.stdout + r.stderr
    assert json.loads((unit / "models" / f"{MODEL}.json").read_text())["created_at"] == "2026-12-03T00:00:00Z"
    assert "kept: 3, 2;" in r.stdout, "the newest two, for a rollback"
    assert not (unit / "state" / "models" / MODEL / "1").exists()
    console.kill()
    r = update(url, repo, unit, verb="rollback")
    assert r.returncode == 0 and "rolled back to release 2" in r.stdout, r.stdout + r.stderr
    assert json.loads((unit / "models" / f"{MODEL}.json").read_text())["created_at"] == "2026-12-02T00:00:00Z"
    r = update(url, repo, unit, "--version", "1")
    assert r.returncode == 2 and r.stderr.startswith("defect-edge: error: repository") and "cannot download" in r.stderr
    assert r.stderr.count("\n") == 1, "one line"
    assert (unit / "models" / f"{MODEL}.json").read_bytes() != v1, "nothing changed by a failed update"


def test_every_tampering_is_refused_and_leaves_the_unit_as_it_was(plant: tuple[release.Repo, ConsoleProc, Path]
                                                                  ) -> None:
    repo, console, tmp = plant
    url = f"{console.url}/releases"

    def unit(name: str) -> Releases:
        return Releases(url, repo.metadata / "1.root.json", tmp / name / "state")

    def refused(r: Releases, words: str, version: int | None = None) -> None:
        models = r.state.parent / "models"
        before = sorted(p.name for p in models.iterdir()) if models.is_dir() else []
        manifest = (models / f"{MODEL}.json").read_bytes() if (models / f"{MODEL}.json").is_file() else b""
        with pytest.raises(ReleaseError, match=words):
            r.install(MODEL, models, version)
        assert (sorted(p.name for p in models.iterdir()) if models.is_dir() else []) == before
        assert ((models / f"{MODEL}.json").read_bytes() if manifest else b"") == manifest
        assert not any((r.state / "partial").glob("*")), "a bad file is not kept to resume"

    good = unit("good")
    good.install(MODEL, tmp / "good" / "models")

    # A flipped byte in a published file.
    release.publish(repo, model_copy(tmp / "v2", "2026-12-02T00:00:00Z"))
    with flipped_byte(next((repo.path / "targets" / f"models/{MODEL}/2").glob(f"*.{MODEL}.tflite"))):
        refused(unit("flipped"), "length or sha256 is not the signed one")

    # Metadata signed by a key the root does not name.
    saved = (repo.metadata / "timestamp.json").read_bytes()
    with forged_timestamp(repo):
        refused(unit("forged"), "not signed by the keys the trusted root names")

    # An older version replayed to a unit that has seen a newer one.
    good.install(MODEL, tmp / "good" / "models")
    old_timestamp = saved
    release.publish(repo, model_copy(tmp / "v3", "2026-12-03T00:00:00Z"))
    good.install(MODEL, tmp / "good" / "models")
    newest = (repo.metadata / "timestamp.json").read_bytes()
    (repo.metadata / "timestamp.json").write_bytes(old_timestamp)
    refused(good, "older version than one already trusted")
    (repo.metadata / "timestamp.json").write_bytes(newest)

    # A stale repository: its timestamp expired.
    release.refresh(repo, days=-1)
    refused(unit("frozen"), "expired metadata")
    release.refresh(repo)
    assert unit("fresh").install(MODEL, tmp / "fresh" / "models")[0].version == 3


class Throttle(ThreadingHTTPServer):
    """A slow link to the console: forwards each GET (and its Range) and sends the answer at ``rate`` bytes/s."""

    def __init__(self, upstream: str, rate: float) -> None:
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                req = urllib.request.Request(upstream + self.path, headers={
                    k: v for k, v in self.headers.items() if k.lower() == "range"})
                try:
                    resp = urllib.request.urlopen(req, timeout=30)
                except urllib.error.HTTPError as e:
                    resp = e
                with resp:
                    self.send_response(resp.status)
                    for k in ("Content-Length", "Content-Range", "Content-Type"):
                        if resp.headers.get(k):
                            self.send_header(k, resp.headers[k])
                    self.end_headers()
                    try:
                        while chunk := resp.read(8192):
                            self.wfile.write(chunk)
                            time.sleep(len(chunk) / srv.rate)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the unit was killed: what this test is about

        self.rate = rate
        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_unit_killed_mid_download_resumes_where_it_stopped(plant: tuple[release.Repo, ConsoleProc, Path]) -> None:
    repo, console, tmp = plant
    unit = tmp / "unit"
    slow = Throttle(f"{console.url}/releases", rate=400_000)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "models", "update", MODEL, "--repo",
                                 f"http://127.0.0.1:{slow.server_address[1]}", "--root",
                                 str(repo.metadata / "1.root.json"), "--state", str(unit / "state"),
                                 "--models-dir", str(unit / "models")],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def partial() -> int:
            return max((p.stat().st_size for p in (unit / "state" / "partial").glob("*")), default=0)

        assert until(lambda: partial() > 1_000_000, 60), "the model's file is being fetched"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        slow.shutdown()
        slow.server_close()
    cut = partial()
    r = update(f"{console.url}/releases", repo, unit)
    assert r.returncode == 0, r.stderr
    assert " MB resumed" in r.stdout, (cut, r.stdout)
    resumed = float(r.stdout.split(" MB resumed")[0].rsplit(", ", 1)[1])
    assert resumed * 1e6 >= cut - 1e5 and "release 1 verified" in r.stdout and ": OK:" in r.stdout, r.stdout
    assert not any((unit / "state" / "partial").glob("*"))


def test_a_unit_that_reaches_only_the_broker_takes_its_release_through_it(
        plant: tuple[release.Repo, ConsoleProc, Path], broker: Broker) -> None:
    """``models update --repo mqtt://defect-console``, as its own process, through the real console's answers on
    the broker: the release installed as over HTTP; a flipped byte refused whichever way it came (TUF checks the
    bytes, not the road); a request for a file outside the repository answered "no such file"; the console gone,
    one line."""
    repo, console, tmp = plant
    unit = tmp / "unit"
    cfg = write_toml(tmp / "edge.toml", {"device": {"id": "unit7"}, "camera": {"source": "0"},
                                         "mqtt": {"host": "127.0.0.1", "port": broker.port}})
    via = ("--config", str(cfg), "--timeout-s", "5")
    r = update("mqtt://defect-console", repo, unit, *via)
    assert r.returncode == 0 and f"{MODEL}: release 1 verified" in r.stdout and ": OK:" in r.stdout, r.stdout + r.stderr
    assert json.loads((unit / "models" / f"{MODEL}.json").read_text())["created_at"] == "2026-12-01T00:00:00Z"

    release.publish(repo, model_copy(tmp / "v2", "2026-12-02T00:00:00Z"))
    with flipped_byte(next((repo.path / "targets" / f"models/{MODEL}/2").glob(f"*.{MODEL}.tflite"))):
        r = update("mqtt://defect-console", repo, unit, *via)
    assert r.returncode == 2 and "length or sha256" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert json.loads((unit / "models" / f"{MODEL}.json").read_text())["created_at"] == "2026-12-01T00:00:00Z"

    c = Collector(broker.port, "defect-console/releases/unit8/part")
    try:
        # In order, answered in order by one thread: once the last is answered, the one between was refused.
        c.publish("defect-edge/unit8/release/get",  # this unit's own configuration, beside the repository
                  json.dumps({"id": "00000001", "path": "metadata/../../edge.toml", "offset": 0}))
        c.publish("defect-edge/unit8/release/get", b'{"id": "00000003", "path": "/etc/passwd", "offset": 0}')
        c.publish("defect-edge/unit8/release/get", json.dumps({"id": "00000002", "path": "metadata/1.root.json",
                                                               "offset": 0}))
        assert c.wait(lambda m: len(m) >= 2, 15), c.messages
        answers = {head.id: (head, data) for head, data in (read_file_part(p) for _, p, _ in c.messages)}
        assert set(answers) == {"00000001", "00000002"}, "a request off the contract is not answered"
        assert answers["00000001"][0].status == 404 and answers["00000001"][1] == b""
        assert answers["00000002"][0].status == 200
        assert answers["00000002"][1] == (repo.metadata / "1.root.json").read_bytes()
    finally:
        c.close()

    console.kill()
    r = update("mqtt://defect-console", repo, unit, *via)
    assert r.returncode == 2 and "no answer from the console over MQTT" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, "one line"
