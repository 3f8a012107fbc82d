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


def test_retraining_on_the_consoles_export_of_casting_reviews(casting_model: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A user's casting model fine-tuned on what people reviewed in the console (photos it never trained on, their
    truth from the data set's folders), exported by the console as it exports, and judged against the model it would
    replace on the newest reviewed items: the report says which is better, with the figures and the items they
    call differently; the new file keeps the old one's layers (its Grad-CAM layer) and input."""
    import time

    from console import config, images
    from console.store import db, review, writer
    from contract import payloads
    from converter.dataset import open_folder
    from edge.tfload import load_model

    test_split = open_folder(casting_model.parent / "split" / "test").sample(300, seed=5)
    cfg = config.parse({"state": {"dir": str(tmp_path / "console")}})
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    items = []
    for i, path in enumerate(test_split.paths):
        frame = f"u1-1-{i:09d}"
        data = path.read_bytes()
        sha = images.store(cfg.images_dir, data)
        a = payloads.Alert(device_id="u1", kind="defect", frame_id=frame, dedup_key=f"u1:defect:{i}",
                           label="defective", p_defect=0.9, model="casting")
        items += [writer.Item("alert", "u1", 1.0 + i, message=a),
                  writer.Item("snapshot", "u1", 1.0 + i, key=frame, sha256=sha, size=len(data))]
    writer.write(engine, items)
    import numpy as np

    for i in np.random.default_rng(7).permutation(len(test_split.labels)):  # a quality lead reviews them, in turn
        review.record(engine, device_id="u1", frame_id=f"u1-1-{i:09d}",
                      verdict="right" if test_split.labels[i] else "wrong_good", note="", user="lead",
                      request_id=None)
        time.sleep(0.001)
    export = tmp_path / "export"
    counts = review.export(engine, cfg.images_dir, export)
    assert counts["eval_good"] + counts["eval_defect"] == 60
    old_h5 = casting_model.with_suffix(".h5")
    new_h5 = tmp_path / "casting.v2.h5"
    assert main(["train", str(export), "--init-from", str(old_h5), "--out", str(new_h5), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "casting.v2.retrain.json").read_text())
    print(out)
    assert f"{r['verdict'].upper()} than casting.h5 on the 60 newest reviewed items" in out
    assert r["images"] == {"train": 192, "validation": 48, "eval": 60} and r["convention"] == "casting.json"
    old, new = r["eval"]["old"], r["eval"]["new"]
    assert r["better"] == ((new["accuracy"] > old["accuracy"] and new["recall_defect"] >= old["recall_defect"])
                           or (new["accuracy"] == old["accuracy"] and new["recall_defect"] > old["recall_defect"]))
    assert len(r["differ"]) == round((1 - r["agreement"]) * 60)
    assert all(d["file"].startswith(("good/", "defect/")) for d in r["differ"])
    md = (tmp_path / "casting.v2.retrain.md").read_text()
    assert "| accuracy |" in md and "false_reject" in md
    a, b = load_model(old_h5), load_model(new_h5)
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert a.input_shape == b.input_shape and b.output_shape[-1] == 1
    assert main(["train", str(tmp_path / "console"), "--init-from", str(old_h5)]) == 2
    assert "no train/ and eval/" in capsys.readouterr().err
