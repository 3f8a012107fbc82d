"""The systemd units: `systemd-analyze verify` accepts them and `security` rates each at 2.5 or below."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")


def installed_copy(unit: str, tmp: Path, name: str | None = None) -> Path:
    """The unit as installed, but pointing at this checkout's venv (verify checks that ExecStart exists)."""
    text = (UNITS / unit).read_text().replace("/opt/defect-edge/.venv/bin", str(Path(sys.executable).parent))
    out = tmp / (name or unit)
    out.write_text(text)
    return out


@pytest.mark.parametrize(("unit", "name"), [("defect-edge.service", None), ("defect-relay.service", None),
                                            ("defect-edge@.service", "defect-edge@station2.service")])
def test_verify(unit: str, name: str | None, tmp_path: Path) -> None:
    path = installed_copy(unit, tmp_path, name)
    proc = subprocess.run([str(ANALYZE), "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def exposure(path: Path) -> float:
    proc = subprocess.run([str(ANALYZE), "security", "--offline=true", str(path)], capture_output=True, text=True,
                          timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-500:] + proc.stderr
    return float(m.group(1))


def test_hardening(tmp_path: Path) -> None:
    edge = exposure(installed_copy("defect-edge.service", tmp_path))
    template = exposure(installed_copy("defect-edge@.service", tmp_path, "defect-edge@station2.service"))
    relay = exposure(installed_copy("defect-relay.service", tmp_path))
    assert edge <= 2.5 and template <= 2.5
    assert relay < edge, "the relay has no camera to reach: it is locked down further"
