"""The runtimes a unit may have instead of LiteRT, installed for real in a throwaway venv.

tflite-runtime 2.14 (its last release) imports under NumPy 2 but cannot create an interpreter, and cannot run the
dynamic-range models current converters write. The unit must say so in one line and name what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.processes

PROBE = """
import sys
from pathlib import Path
from core.runtime import RuntimeUnavailableError, create_interpreter, find_runtime
rt = find_runtime(("tflite_runtime",))
try:
    create_interpreter(Path(sys.argv[1]), num_threads=1, runtime=rt)
    print("LOADED")
except RuntimeUnavailableError as e:
    print("ERROR", e)
"""


def tflite_runtime_venv(tmp_path_factory: pytest.TempPathFactory, numpy: str) -> Path:
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-runtime 2.14 has no wheels for Python >= 3.12, so no unit can have this combination")
    env_dir = tmp_path_factory.mktemp("tflite_runtime_venv")
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", numpy],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return py


def probe(py: Path, model: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(py), "-c", PROBE, str(model)], capture_output=True, text=True, env=env, timeout=120)
    return proc.stdout.strip().splitlines()[-1]


def test_numpy2_incompatibility_is_named(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> None:
    out = probe(tflite_runtime_venv(tmp_path_factory, "numpy>=2"), models_dir / "tiny.tflite")
    assert out == ("ERROR tflite_runtime was built for NumPy 1.x and cannot run under NumPy 2; "
                   "install LiteRT instead: pip install ai-edge-litert")


def test_operators_too_new_for_the_runtime_are_named(tmp_path_factory: pytest.TempPathFactory, keras2_dir: Path,
                                                     tmp_path: Path) -> None:
    from converter.cli import main

    # A Flatten -> Dense layer big enough for dynamic-range quantization to quantize it (small ones are skipped).
    assert main(["convert", str(keras2_dir / "keras2_cnn.h5"), "--quantize", "dynamic", "--out-dir", str(tmp_path),
                 "--eval-limit", "20", "--min-agreement", "0"]) == 0
    out = probe(tflite_runtime_venv(tmp_path_factory, "numpy<2"), tmp_path / "keras2_cnn.tflite")
    assert out.startswith("ERROR tflite_runtime is too old for the operators in this model (Didn't find op for "
                          "builtin opcode 'FULLY_CONNECTED' version '12'")
    assert out.endswith("install LiteRT instead: pip install ai-edge-litert")
