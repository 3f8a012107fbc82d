"""`make demo`, the main job end to end: it must end with mails carrying heatmaps and leave no process behind, with
Mosquitto and with the embedded broker it falls back to where Mosquitto can be neither found nor installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.processes  # about 65 s each: the demo runs for DEMO_SECONDS


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_ends_with_mails_carrying_heatmaps(broker: str, tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_DIR": str(tmp_path), "DEMO_SECONDS": "60", "DEMO_BROKER": broker}
    proc = subprocess.run([sys.executable, "-m", "demo"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1 when it left a process running
    mails = sorted((tmp_path / "mail").glob("*.eml"))
    assert mails, proc.stdout[-3000:]
    first = mails[0].read_bytes()
    assert b".gradcam.jpg" in first and b".snapshot.jpg" in first, proc.stdout[-3000:]
    assert f"{len(mails)} mails in {tmp_path / 'mail'}" in proc.stdout
    assert (tmp_path / "demo" / "edge" / "state.db").is_file()
    if broker == "amqtt":
        assert "using amqtt, an embedded Python broker" in proc.stdout
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(tmp_path) not in ps, [line for line in ps.splitlines() if str(tmp_path) in line]
