"""The appliance as a plant installs it: `make install` into a staging DESTDIR, unpacked where PREFIX says (as a package
is), then its programs run from there, its units pass `systemd-analyze verify` and `security` rates each at 2.5 or
below, and its users are what systemd-sysusers would create.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.processes  # builds a venv of the unit's own dependencies (about 20 s with pip's cache)

ANALYZE = shutil.which("systemd-analyze")
SYSUSERS = shutil.which("systemd-sysusers")
UNITS = ("defect-edge.service", "defect-edge@.service", "defect-relay.service", "defect-console.service")


@dataclass(frozen=True)
class Installed:
    prefix: Path
    etc: Path  # SYSCONFDIR/defect-edge
    units: Path
    sysusers: Path
    log: str  # what the second `make install` printed


def make_install(stage: Path, prefix: Path, tmp: Path, *extra: str) -> str:
    """`make install` into ``stage``, with every system path under ``tmp``; what it printed."""
    proc = subprocess.run(["make", "--no-print-directory", "install", f"DESTDIR={stage}", f"PREFIX={prefix}",
                           f"SYSCONFDIR={tmp / 'etc'}", f"UNITDIR={tmp / 'units'}", f"SYSUSERSDIR={tmp / 'sysusers'}",
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("root")
    stage, prefix = tmp / "stage", tmp / "opt" / "defect-edge"
    make_install(stage, prefix, tmp, "EXTRAS=relay")  # the relay's templates and channels, as its host installs it
    staged_etc = stage / (tmp / "etc" / "defect-edge").relative_to("/")
    (staged_etc / "edge.toml").write_text("# edited by the plant\n")
    (staged_etc / "mqtt_password").write_text("s3cret\n")
    log = make_install(stage, prefix, tmp, "EXTRAS=relay")  # an upgrade in place
    # Unpack the staged tree at its real place, as a package manager would: nothing may still point into the stage.
    for top in (stage / tmp.relative_to("/")).iterdir():
        shutil.move(str(top), str(tmp / top.name))
    shutil.rmtree(stage)
    return Installed(prefix, tmp / "etc" / "defect-edge", tmp / "units", tmp / "sysusers", log)


def test_tree(installed: Installed) -> None:
    p = installed.prefix
    for rel in ("README.md", "examples/edge.toml", "examples/relay.toml", "share/mosquitto/defect-edge.conf",
                "share/mosquitto/acl", "models/mobilenetv2.tflite", "models/mobilenetv2.json",
                "models/mobilenetv2.h5", "models/mobilenetv2.signature.npz", ".venv/bin/defect-edge",
                ".venv/bin/defect-relay"):
        assert (p / rel).is_file(), rel
    assert (p / "share/mosquitto/make-credentials.sh").stat().st_mode & stat.S_IXUSR
    assert {f.name for f in installed.units.iterdir()} == set(UNITS)
    # Configuration and credentials: the plant's edits survive an upgrade; credentials are root's alone.
    assert (installed.etc / "edge.toml").read_text() == "# edited by the plant\n"
    assert "kept " + str(installed.etc / "edge.toml") in installed.log
    assert (installed.etc / "mqtt_password").read_text() == "s3cret\n"
    assert (installed.etc / "relay.toml").read_text() == (REPO / "examples/relay.toml").read_text()
    for cred in ("mqtt_password", "relay.mqtt_password", "relay.smtp_password"):
        assert stat.S_IMODE((installed.etc / cred).stat().st_mode) == 0o600, cred


def test_nothing_points_into_the_stage_or_the_default_prefix(installed: Installed) -> None:
    texts = [f for f in (installed.prefix / ".venv/bin").iterdir() if f.is_file() and not f.is_symlink()]
    texts += [installed.prefix / ".venv/pyvenv.cfg", *installed.units.iterdir()]
    for f in texts:
        data = f.read_bytes()
        assert b"/stage/" not in data, f
        assert b"/opt/defect-edge" not in data or str(installed.prefix).encode() in data, f
    assert (installed.prefix / ".venv/bin/defect-edge").read_text().splitlines()[0] == \
        f"#!{installed.prefix}/.venv/bin/python"
    unit = (installed.units / "defect-edge@.service").read_text()
    assert f"ExecStart={installed.prefix}/.venv/bin/defect-edge run --config {installed.etc}/%i.toml" in unit
    assert f"LoadCredential=mqtt_password:{installed.etc}/%i.mqtt_password" in unit


def test_installed_unit_classifies_without_tensorflow(installed: Installed, casting: Path) -> None:
    """The relocated venv runs through its own #! line, with the unit's dependencies only (no TensorFlow)."""
    images = sorted((casting / "defect").iterdir())[:3] + sorted((casting / "good").iterdir())[:3]
    proc = subprocess.run([str(installed.prefix / ".venv/bin/defect-edge"), "classify", *map(str, images),
                           "--models-dir", str(installed.prefix / "models"), "--model", "mobilenetv2", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert summary["frames"] == 6 and summary["skipped"] == 0, summary
    code = "import importlib.util as u, edge; print(u.find_spec('tensorflow') is None, edge.__file__)"
    probe = subprocess.run([str(installed.prefix / ".venv/bin/python"), "-c", code],
                           capture_output=True, text=True, timeout=60, cwd=installed.prefix)  # not this checkout
    no_tensorflow, loaded_from = probe.stdout.split()
    assert no_tensorflow == "True" and loaded_from.startswith(str(installed.prefix / ".venv/lib/")), probe.stdout


def test_installed_relay_checks_its_config(installed: Installed, tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text((installed.etc / "relay.toml").read_text())
    proc = subprocess.run([str(installed.prefix / ".venv/bin/defect-relay"), "check-config", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(SYSUSERS is None, reason="systemd-sysusers is not installed on this machine")
def test_system_users(installed: Installed) -> None:
    proc = subprocess.run([str(SYSUSERS), "--dry-run", str(installed.sysusers / "defect-edge.conf")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for user in ("defect-edge", "defect-relay"):  # created, or already there from an earlier install on this machine
        assert f"Creating user '{user}'" in out or not re.search(rf"\b{user}\b", out), out
    units = {u: (installed.units / u).read_text() for u in UNITS}
    assert all("User=defect-edge" in units[u] for u in UNITS[:2]) and "User=defect-relay" in units[UNITS[2]]


def instance(installed: Installed, unit: str, tmp: Path) -> Path:
    """`verify` and `security` want a unit name, so the template is checked as an instance of it."""
    if "@." not in unit:
        return installed.units / unit
    out = tmp / unit.replace("@.", "@station2.")
    out.write_text((installed.units / unit).read_text())
    return out


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")
@pytest.mark.parametrize("unit", UNITS)
def test_verify(installed: Installed, unit: str, tmp_path: Path) -> None:
    proc = subprocess.run([str(ANALYZE), "verify", str(instance(installed, unit, tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def exposure(path: Path) -> float:
    proc = subprocess.run([str(ANALYZE), "security", "--offline=true", str(path)], capture_output=True, text=True,
                          timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-500:] + proc.stderr
    return float(m.group(1))


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")
def test_hardening(installed: Installed, tmp_path: Path) -> None:
    edge, template, relay, console = (exposure(instance(installed, u, tmp_path)) for u in UNITS)
    print(f"exposure: defect-edge {edge}, defect-edge@ {template}, defect-relay {relay}, defect-console {console}")
    assert edge <= 2.5 and template <= 2.5 and console <= 2.5
    assert relay < edge, "the relay has no camera to reach: it is locked down further"


BOOKWORM_NUMPY = "1.24.2"  # Raspberry Pi OS Bookworm's python3-numpy, which its python3-picamera2 is built against


def test_raspberry_pi_install_keeps_the_system_numpy(tmp_path: Path, casting: Path) -> None:
    """On a Pi the venv sees Debian's picamera2 and must keep NumPy 1 (Bookworm's), so pip picks an OpenCV 4 that
    still supports it. The unit must run on that set and make exactly the same calls as on ours.

    The "system" Python here is a venv holding Bookworm's NumPy: the install reads its version there. (A venv made
    from it does not see its packages, so pip installs the newest NumPy 1 instead of keeping 1.24.2 as on a Pi.)
    """
    system = tmp_path / "system"
    subprocess.run(["python3", "-m", "venv", str(system)], check=True, timeout=300)
    pip = subprocess.run([str(system / "bin/python"), "-m", "pip", "install", "-q", f"numpy=={BOOKWORM_NUMPY}"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode and "No matching distribution" in pip.stderr:
        pytest.skip(f"NumPy {BOOKWORM_NUMPY} has no wheel for this Python (Bookworm's is 3.11)")
    assert pip.returncode == 0, pip.stderr[-2000:]
    prefix = tmp_path / "opt"
    out = make_install(tmp_path / "stage", prefix, tmp_path, f"PYTHON={system / 'bin/python'}",
                       "SYSTEM_SITE_PACKAGES=yes")
    assert f"the system's NumPy is {BOOKWORM_NUMPY}, so NumPy stays 1.x" in out
    py = tmp_path / "stage" / prefix.relative_to("/") / ".venv/bin/python"  # run in place: its #! says PREFIX
    versions = subprocess.run([str(py), "-c", "import numpy, cv2; print(numpy.__version__, cv2.__version__)"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    numpy_version, opencv_version = versions.stdout.split()  # a Pi keeps its own 1.24.2, which satisfies the pins
    assert numpy_version.startswith("1.") and opencv_version.startswith("4."), versions.stdout + versions.stderr

    images = [str(p) for p in sorted((casting / "defect").iterdir())[:5] + sorted((casting / "good").iterdir())[:5]]

    def calls(python: str) -> list[float]:
        out = subprocess.run([python, "-m", "edge.cli", "classify", *images, "--models-dir", str(REPO / "models"),
                              "--model", "mobilenetv2", "--json"], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return [json.loads(line)["p_defect"] for line in out.stdout.splitlines()[:-1]]

    assert calls(str(py)) == calls(sys.executable)
