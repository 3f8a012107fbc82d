"""The unit on aarch64, as every unit in the field is: `make install`'s script run inside a Debian Bookworm root under
qemu-user, as on a Raspberry Pi (Bookworm's Python 3.11 and NumPy 1.24, a venv with the system's site packages),
then `classify` on fixed images with every committed model, compared with the same command on x86, and
`verify-model` there. Both run on the kernels a Pi runs: XNNPACK (the root has the CPU lists LiteRT reads before it
creates the delegate, and each run asserts it was created) on an emulated Pi 4 (Cortex-A72) and Pi 5 (Cortex-A76).

Float models must agree within 1e-5 (rounding only). Quantized ones may not be bit-identical: LiteRT picks other
kernels on aarch64. They must stay within the platform allowance the converter recorded in the model's verification
set, which is what a unit in the field checks its p against (the converter's own TFLite p) too. The measured drift
is printed per model (``-s`` shows it).

The root (harness/aarch64.py) is built once and kept where the machine keeps its disk; building it takes minutes.
Under CI it must run: a missing prerequisite fails the test there instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core import manifest as mf
from harness import REPO, aarch64
from harness.data import casting_present, casting_sample

# The first test pays for building the root (about 6 min here) and installing under emulation (about 4 min).
pytestmark = [pytest.mark.processes, pytest.mark.timeout(2700)]

FLOAT_TOLERANCE = 1e-5
IMAGES = "/tmp/defect-images"  # inside the root
MODELS = sorted(p.stem for p in (REPO / "models").glob("*.tflite"))


@pytest.fixture(scope="module")
def root() -> Path:
    reason = aarch64.missing() or (None if casting_present() else "the casting photos (../shared/data) are missing")
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the aarch64 test must run in CI: {reason}")
        pytest.skip(f"aarch64 under qemu-user cannot run here: {reason}")
    built = aarch64.build()
    src = aarch64.copy_checkout(built, REPO)
    images = built / IMAGES.lstrip("/")
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    for p in casting_sample(16):
        shutil.copyfile(p, images / p.name)
    with aarch64.proc_mounted(built):
        proc = aarch64.run(built, ["sh", f"{src}/systemd/install.sh"], timeout=30 * 60,
                           env={"SYSTEM_SITE_PACKAGES": "yes"})
        assert proc.returncode == 0, f"install.sh failed on aarch64:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "NumPy stays 1.x" in proc.stdout, proc.stdout  # Bookworm's numpy 1.24, as on a Pi
        yield built


def _classify_json(stdout: str) -> dict[str, float]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {Path(r["origin"]).name: float(r["p_defect"]) for r in rows if "p_defect" in r}


def _x86(model: str, folder: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "classify", "--models-dir", str(REPO / "models"),
                           "--model", model, "--threads", "1", "--json", str(folder)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return _classify_json(proc.stdout)


def _tolerance(model: str) -> tuple[str, float]:
    m = mf.load(REPO / "models" / f"{model}.json")
    if m.quantization in ("float32", "float16"):
        return m.quantization, FLOAT_TOLERANCE
    assert m.verification is not None, f"{model}: a committed quantized model needs its verification set"
    doc: dict[str, Any] = json.loads(mf.resolve(REPO / "models" / f"{model}.json", m.verification).read_text())
    return m.quantization, float(doc["tolerance"]["platform_allowance"])


def test_the_installed_unit_is_aarch64(root: Path) -> None:
    proc = aarch64.run(root, [f"{aarch64.PREFIX}/.venv/bin/python", "-c",
                              "import platform, numpy, cv2, ai_edge_litert; "
                              "print(platform.machine(), numpy.__version__, cv2.__version__)"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    machine, numpy_version, _ = proc.stdout.split()
    assert machine == "aarch64"
    assert numpy_version.startswith("1."), numpy_version


XNNPACK = "Created TensorFlow Lite XNNPACK delegate"


@pytest.mark.parametrize("board", sorted(aarch64.PI_CPUS))
@pytest.mark.parametrize("model", MODELS)
def test_classify_on_aarch64_matches_x86(root: Path, model: str, board: str) -> None:
    proc = aarch64.run(root, [f"{aarch64.PREFIX}/.venv/bin/defect-edge", "classify", "--models-dir",
                              f"{aarch64.PREFIX}/models", "--model", model, "--threads", "1", "--json", IMAGES],
                       timeout=20 * 60, cpu=board)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert XNNPACK in proc.stderr, f"not the kernels a Pi runs (no XNNPACK delegate): {proc.stderr[-1500:]}"
    arm = _classify_json(proc.stdout)
    x86 = _x86(model, root / IMAGES.lstrip("/"))
    assert sorted(arm) == sorted(x86) and len(arm) == 16
    dp = {name: abs(arm[name] - x86[name]) for name in x86}
    quantization, tolerance = _tolerance(model)
    worst = max(dp, key=dp.__getitem__)
    flips = [n for n in x86 if (x86[n] > 0.5) != (arm[n] > 0.5)]
    print(f"\n{model} ({quantization}) on {board} ({aarch64.PI_CPUS[board]}, XNNPACK): x86 vs aarch64 "
          f"max |dp| {dp[worst]:.3g} ({worst}: {x86[worst]:.4f} -> "
          f"{arm[worst]:.4f}), mean {sum(dp.values()) / len(dp):.3g}, decisions flipped {len(flips)}, "
          f"tolerance {tolerance:.3g}")
    assert dp[worst] <= tolerance, f"{model}: {worst} moved by {dp[worst]:.4f} > {tolerance:.4f}"


@pytest.mark.parametrize("model", MODELS)
def test_verify_model_on_aarch64(root: Path, model: str) -> None:
    """The unit's own re-proof of parity, on aarch64: the check a Pi runs when it loads the model (on a Pi 4's CPU,
    the one without the dot product the x86 converter's VNNI kernels resemble)."""
    proc = aarch64.run(root, [f"{aarch64.PREFIX}/.venv/bin/defect-edge", "verify-model", model, "--models-dir",
                              f"{aarch64.PREFIX}/models", "--threads", "1"], timeout=20 * 60, cpu="pi4")
    print("\n" + proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert XNNPACK in proc.stderr, proc.stderr[-1500:]
    assert " OK: " in proc.stdout
