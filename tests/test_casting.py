"""The real casting images (../shared/data/casting, read in place, never copied): train, then auto-convert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.cli import main
from converter.dataset import open_folder
from core import manifest as mf
from core.manifest import InputSpec
from core.preprocess import Preprocessor
from harness.data import casting_split
from tests.conftest import TINY, build_tiny

pytestmark = pytest.mark.tensorflow


def test_auto_quantization_meets_parity_on_held_out_casting_images(casting: Path, tmp_path: Path,
                                                                    keras_mod: Any) -> None:
    train_dir, test_dir = casting_split(casting, tmp_path / "casting")
    train = open_folder(train_dir).sample(1000, seed=0)
    x, y = train.pixels(Preprocessor(InputSpec(height=TINY, width=TINY, dtype="float32")))
    keras_mod.utils.set_random_seed(0)
    model = build_tiny(keras_mod)
    model.compile(optimizer=keras_mod.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x.astype(np.float32) / 255, y, epochs=6, batch_size=32, verbose=0)
    h5 = tmp_path / "casting_tiny.h5"
    model.save(h5)

    held_out = open_folder(test_dir)
    assert held_out.counts == {"good": 262 - 64, "defect": 453}
    assert main(["convert", str(h5), "--calibration", str(train_dir), "--eval", str(test_dir),
                 "--eval-limit", "0"]) == 0  # all 651 held-out photos
    report = json.loads((tmp_path / "casting_tiny.parity.json").read_text())
    chosen = next(c for c in report["candidates"] if c["verdict"] == "accepted")
    assert report["eval"]["n"] == 651 and chosen["agreement"] >= 0.99
    assert mf.load(tmp_path / "casting_tiny.json").quantization == report["chosen"]
    # The model learned something real, so parity is not agreement between two coin flips.
    assert chosen["auc_keras"] > 0.9
