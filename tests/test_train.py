"""The reference architectures and `defect-convert train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converter.architectures import ARCHITECTURES, build
from converter.cli import main
from converter.keras_compat import inspect, load_model

pytestmark = pytest.mark.tensorflow


@pytest.mark.parametrize("key", sorted(ARCHITECTURES))
def test_reference_architectures_have_named_gradcam_layers(key: str) -> None:
    arch = ARCHITECTURES[key]
    model = build(key)
    build(key)  # building again in the same process must not rename anything
    model = build(key)
    assert model.input_shape == (None, arch.size, arch.size, 3) and model.output_shape == (None, 1)
    assert len(model.get_layer(arch.gradcam_layer).output.shape) == 4
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_efficientnet_keeps_its_own_rescaling() -> None:
    """Its input is scaled twice (/255 outside, Rescaling inside), as users' files are: documented, not fixed."""
    names = [type(layer).__name__ for layer in build("efficientnetb0").layers[:4]]
    assert "Rescaling" in names and "Normalization" in names


def test_train_writes_h5_and_report(synth_eval: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "cnn.h5"
    assert main(["train", str(synth_eval), "--arch", "cnn", "--epochs", "1", "--limit", "40", "--out", str(out)]) == 0
    assert "saved " in capsys.readouterr().out
    report = json.loads((tmp_path / "models" / "cnn.train.json").read_text())
    assert report["images"]["train"] + report["images"]["validation"] == 40
    assert set(report["validation"]) >= {"accuracy", "precision_defect", "recall_defect", "roc_auc", "confusion"}
    assert (tmp_path / "models" / "cnn.confusion.png").stat().st_size > 1000
    assert "| accuracy |" in (tmp_path / "models" / "cnn.train.md").read_text()
    info = inspect(load_model(out), out)
    assert (info.architecture, info.gradcam_layer, info.height) == ("cnn", "conv2d_3", 256)
    assert not list((tmp_path / "models").glob(".*")), "no temporary file left"


def test_weights_for_the_custom_cnn_are_refused(synth_eval: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w.h5"
    w.write_bytes(b"x")
    assert main(["train", str(synth_eval), "--arch", "cnn", "--weights", str(w), "--out", str(tmp_path / "m.h5")]) == 2
    assert "no pretrained backbone" in capsys.readouterr().err
