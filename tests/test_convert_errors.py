"""Bad input to `defect-convert`: one clear line, exit status 2, and nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pytest

from converter.cli import EXIT_BAD_INPUT, main
from tests.conftest import TINY

pytestmark = pytest.mark.tensorflow


def fails_with(capsys: pytest.CaptureFixture[str], argv: list[object], message: str) -> None:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_BAD_INPUT
    assert err and err[-1].startswith("defect-convert: error: ") and message in err[-1], err


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fails_with(capsys, ["convert", tmp_path / "nope.h5"], "nope.h5: file not found")


def test_not_hdf5(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "model.h5"
    bad.write_text("this is a text file\n")
    fails_with(capsys, ["convert", bad], "not a Keras model file; expected .h5 (Keras 2 or 3), .keras "
                                                "(Keras 3) or a SavedModel folder")


def test_hdf5_without_a_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kernel", data=np.zeros(3))
    fails_with(capsys, ["convert", path], "HDF5 file holds no Keras model")


def test_truncated_hdf5(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_h5: Path) -> None:
    path = tmp_path / "cut.h5"
    path.write_bytes(tiny_h5.read_bytes()[:5000])
    fails_with(capsys, ["convert", path], "damaged or truncated")


def _save(keras: Any, inputs: Any, outputs: Any, path: Path) -> Path:
    keras.Model(inputs, outputs).save(path)
    return path


def test_unsupported_models_say_what_is_supported(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  keras_mod: Any) -> None:
    k = keras_mod
    img = k.Input((TINY, TINY, 3))
    feat = k.layers.GlobalAveragePooling2D()(k.layers.Conv2D(4, 3)(img))
    two_heads = _save(k, img, [k.layers.Dense(1, activation="sigmoid")(feat),
                               k.layers.Dense(1, activation="sigmoid")(feat)], tmp_path / "two.h5")
    fails_with(capsys, ["convert", two_heads], "model has 2 outputs; supported: one image input")
    three = _save(k, img, k.layers.Dense(3, activation="softmax")(feat), tmp_path / "three.h5")
    fails_with(capsys, ["convert", three], "output shape (None, 3) with activation 'softmax' is not supported")
    vec = k.Input((10,))
    tabular = _save(k, vec, k.layers.Dense(1, activation="sigmoid")(vec), tmp_path / "tab.h5")
    fails_with(capsys, ["convert", tabular], "input shape (None, 10) is not one RGB or grey image")
    fails_with(capsys, ["convert", two_heads.with_name("three.h5"), "--gradcam-layer", "nope"],
               "output shape (None, 3)")


def test_unknown_gradcam_layer(capsys: pytest.CaptureFixture[str], tiny_h5: Path) -> None:
    fails_with(capsys, ["convert", tiny_h5, "--gradcam-layer", "conv_9"], "Grad-CAM layer 'conv_9' not found")


def test_empty_and_one_class_folders(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_h5: Path,
                                     synth_eval: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "good").mkdir(parents=True)
    (empty / "defect").mkdir()
    fails_with(capsys, ["convert", tiny_h5, "--eval", empty], "no images found in good/ or defect/")
    one = tmp_path / "one"
    shutil.copytree(synth_eval / "good", one / "good")
    fails_with(capsys, ["convert", tiny_h5, "--eval", one], "only good images found; both good/ and defect/")
    fails_with(capsys, ["convert", tiny_h5, "--quantize", "int8", "--calibration", one, "--eval", synth_eval],
               "only good images found")
    fails_with(capsys, ["convert", tiny_h5, "--eval", tmp_path / "absent"], "not a folder")


def test_corrupt_images_are_skipped_counted_and_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         tiny_h5: Path, synth_eval: Path) -> None:
    ev = tmp_path / "eval"
    shutil.copytree(synth_eval, ev)
    (ev / "good" / "zz_truncated.png").write_bytes((ev / "good").iterdir().__next__().read_bytes()[:40])
    (ev / "defect" / "zz_empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["convert", str(tiny_h5), "--quantize", "float32", "--eval", str(ev), "--out-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped: " in err and "zz_truncated.png: not a decodable image" in err and "zz_empty.jpg: empty file" \
        in err
    import json

    report = json.loads((out / "tiny.parity.json").read_text())
    assert report["eval"]["unreadable_skipped"] == 2 and report["eval"]["n"] == 80


def test_unwritable_output(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_h5: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails_with(capsys, ["convert", tiny_h5, "--out-dir", blocker / "models"], "cannot create output folder")
    fails_with(capsys, ["train", tmp_path, "--arch", "cnn", "--out", blocker / "m.h5"], "cannot create output")


def test_an_image_that_is_not_a_part_still_classifies(tmp_path: Path) -> None:
    """A grey-scale PNG, as some line cameras write, is expanded to three channels by the shared reader."""
    from core.images import read_rgb

    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), np.full((20, 30), 77, np.uint8))
    frame = read_rgb(path)
    assert frame.shape == (20, 30, 3) and (frame == 77).all()
