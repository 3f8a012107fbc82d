"""The release repository's keys, in-process: a threshold of root keys, key rotation a unit follows from the root it
was given, and versions that only grow. Served by a plain static HTTP server (TUF needs nothing more)."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from converter import release
from converter.cli import main as convert_main
from edge.releases import ReleaseError, Releases
from harness import REPO

MODEL = "cnn"


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    repo = tmp_path / "repo"
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(repo)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield repo, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_keys_rotate_and_a_unit_follows_from_the_root_it_was_given(served: tuple[Path, str], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    repo_dir, url = served
    keys = tmp_path / "keys"
    assert convert_main(["release", "init", "--repo", str(repo_dir), "--keys", str(keys), "--root-keys", "2",
                         "--threshold", "2"]) == 0
    assert "move the root keys" in capsys.readouterr().out
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.glob("*.pem")), "private keys are the owner's alone"
    trusted = tmp_path / "release-root.json"
    shutil.copyfile(repo_dir / "metadata" / "root.json", trusted)
    assert convert_main(["release", "publish", "--repo", str(repo_dir), "--keys", str(keys), "--no-h5",
                         str(REPO / "models" / MODEL)]) == 0
    assert f"{MODEL} release 1:" in capsys.readouterr().out
    repo = release.Repo(repo_dir, keys)
    unit = Releases(url, trusted, tmp_path / "unit")
    assert unit.fetch(MODEL).version == 1
    for role in ("targets", "timestamp", "root"):
        assert convert_main(["release", "rotate", "--repo", str(repo_dir), "--keys", str(keys), role]) == 0
    assert json.loads((repo_dir / "metadata" / "3.root.json").read_text())["signed"]["version"] == 3
    assert unit.fetch(MODEL).version == 1, "a unit trusting root 1 follows the rotations to root 3"
    assert release.publish(repo, REPO / "models" / MODEL, with_h5=False).version == 2
    assert unit.fetch(MODEL).version == 2
    with pytest.raises(release.ReleaseError, match="not newer"):
        release.publish(repo, REPO / "models" / MODEL, version=2, with_h5=False)
    for pem in keys.glob("timestamp-*.pem"):
        pem.unlink()
    assert convert_main(["release", "refresh", "--repo", str(repo_dir), "--keys", str(keys)]) == 2
    assert "0 of the timestamp role's keys here" in capsys.readouterr().err
    with pytest.raises(ReleaseError, match=r"no models/nonesuch/latest\.json"):
        unit.fetch("nonesuch")
    with pytest.raises(ReleaseError, match="is not a model name"):
        unit.fetch("../etc")


def test_a_root_threshold_needs_that_many_of_its_keys(served: tuple[Path, str], tmp_path: Path) -> None:
    repo_dir, _ = served
    keys = tmp_path / "keys"
    repo = release.init(repo_dir, keys, root_keys=2, threshold=2)
    next(keys.glob("root-*.pem")).unlink()  # one of the two root keys stays offline, elsewhere
    with pytest.raises(release.ReleaseError, match="1 of the root role's keys here, its threshold is 2"):
        release.rotate(repo, "targets")
    with pytest.raises(release.ReleaseError, match="needs at least that many root keys"):
        release.init(tmp_path / "other", tmp_path / "k2", root_keys=1, threshold=2)
