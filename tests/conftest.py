"""Shared fixtures: tiny models trained here, Keras 2 files written by tf-keras, and the real casting images.

Models are small enough to train in seconds on 2 cores, but they are real trained Keras models converted by the real
TFLite converter and run by the real LiteRT runtime.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter import synth
from harness.data import CASTING, WHERE, casting_present
from harness.tiny import build_tiny

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = 64  # input side of the tiny test models


# The fixtures that build models with TensorFlow: a test using one needs TensorFlow whatever its module says.
TF_FIXTURES = frozenset({"keras_mod", "tiny_h5", "models_dir", "casting_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test says what it needs (``docs/benchmarks.md``): ``tensorflow`` is derived from its fixtures too, so a
    fast-tier test cannot start a conversion unnoticed."""
    for item in items:
        if TF_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tensorflow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that deselected the ``tensorflow`` tests and still imported TensorFlow has a test that needs it and
    does not say so: the run fails, naming the rule."""
    if "not tensorflow" in (session.config.getoption("markexpr") or "") and "tensorflow" in sys.modules:
        print("\nerror: TensorFlow was imported by a test not marked `tensorflow` (tests/conftest.py TF_FIXTURES)",
              file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def synthetic_xy(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    parts = list(synth.iter_parts(seed, count, size=size))
    return (np.stack([p.image for p in parts]).astype(np.float32) / 255.0,
            np.array([int(p.defective) for p in parts], np.float32))


@pytest.fixture(scope="session")
def keras_mod() -> Any:
    from edge.tfload import tf_keras

    return tf_keras()[1]


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory, keras_mod: Any) -> Path:
    """A tiny sigmoid CNN trained for a few epochs on synthetic parts, saved as legacy .h5 by Keras 3."""
    k = keras_mod
    k.utils.set_random_seed(3)
    model = build_tiny(k)
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="binary_crossentropy")
    x, y = synthetic_xy(400, TINY, seed=11)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def synth_eval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder of synthetic parts, the layout users give to --eval and --calibration."""
    out = tmp_path_factory.mktemp("synth_eval")
    synth.write_dataset(out, count=80, seed=21, size=TINY * 2)
    return out


@pytest.fixture(scope="session")
def keras2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2, EfficientNetB0 and a CNN saved by Keras 2 (tf-keras), with their own predictions."""
    out = tmp_path_factory.mktemp("keras2")
    proc = subprocess.run([sys.executable, str(FIXTURES / "keras2_writer.py"), str(out),
                           "mobilenetv2", "efficientnetb0", "cnn"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def casting() -> Path:
    """The real casting photos. A clone on its own skips the tests that need them, saying where to get them; CI,
    which always has them beside the checkout, fails instead: a missing data set must not pass as a green run."""
    if not casting_present():
        if os.environ.get("CI") == "true":
            pytest.fail(WHERE)
        pytest.skip(WHERE)
    return CASTING


@pytest.fixture(scope="session")
def casting_model(tmp_path_factory: pytest.TempPathFactory, casting: Path, keras_mod: Any) -> Path:
    """A user's model of the casting photos, trained on their train split (harness/belt.py says how); returns its
    manifest, whose folder also holds the splits as ``split/train`` and ``split/test``."""
    from harness.belt import train_casting_model

    return train_casting_model(tmp_path_factory.mktemp("casting_model"), casting)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Path:
    """A unit's models folder: the tiny model converted to int8 (``tiny``) and to float32 (``tiny_f32``)."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("models")
    for name, quant in (("tiny", "int8"), ("tiny_f32", "float32")):
        rc = main(["convert", str(tiny_h5), "--quantize", quant, "--name", name, "--out-dir", str(out),
                   "--eval-limit", "40", "--calibration-count", "60", "--min-agreement", "0"])
        assert rc == 0
    return out


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real Mosquitto on a free loopback port, stopped after the test."""
    from harness.broker import Broker

    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Debian's headless Chromium (harness/browser.py), one per test module; CI fails without it."""
    from harness.browser import chromium, missing

    why = missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with chromium() as b:
        yield b


@pytest.fixture
def daemons():  # type: ignore[no-untyped-def]
    """Edge daemons a test started (tests/daemon_harness.py), killed after it whatever happened."""
    started: list[Any] = []
    yield started
    for d in started:
        d.kill()
