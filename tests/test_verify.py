"""Parity re-proven on the unit's own runtime: the converter's verification set, ``defect-edge verify-model``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import manifest as mf
from edge.cli import main as edge_main

pytestmark = pytest.mark.tensorflow


def test_a_converted_model_carries_its_verification_set(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("tiny_f32", "tiny"):
        m = mf.load(models_dir / f"{name}.json")
        assert m.verification is not None
        data = json.loads((models_dir / m.verification.path).read_text())
        assert len(data["images"]) == 32 and data["quantization"] == m.quantization
        assert data["tolerance"]["max_abs_dp"] >= data["tolerance"]["measured_here_max_abs_dp"]
        assert all(0 <= i["p_tflite"] <= 1 and i["far"] == (abs(i["p_keras"] - 0.5) >= 0.25) for i in data["images"])
        assert edge_main(["verify-model", name, "--models-dir", str(models_dir), "--threads", "1"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{name} on ") and ": OK: 32 images, max |p - p_converter| " in out, out


def test_the_set_is_half_near_the_threshold_half_spread_over_p() -> None:
    from converter.verification import select

    p = np.random.default_rng(1).beta(0.3, 0.3, 400)  # a confident model: most p near 0 or 1
    picks = select(p, 0.5, 32)
    chosen = p[picks]
    nearest = np.sort(np.abs(p - 0.5))[15]
    assert len(picks) == 32 and (np.abs(chosen - 0.5) <= nearest).sum() >= 16
    assert chosen.min() == p.min() and chosen.max() == p.max(), "the spread reaches both ends"
    assert select(p[:20], 0.5, 32) == list(range(20))


def _perturbed_tflite(tiny_h5: Path, keras_mod: Any, tmp: Path) -> Path:
    """The same network with every weight nudged by 5 %: a model that is not the one its manifest verified."""
    from converter.cli import main as convert

    model = keras_mod.models.load_model(tiny_h5, compile=False)
    rng = np.random.default_rng(0)
    model.set_weights([w * (1 + 0.05 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()])
    model.save(tmp / "nudged.h5")
    assert convert(["convert", str(tmp / "nudged.h5"), "--quantize", "float32", "--eval-limit", "20", "--force",
                    "--out-dir", str(tmp / "nudged"), "--name", "nudged"]) == 0
    return tmp / "nudged" / "nudged.tflite"


def test_verify_model_refuses_a_perturbed_model(models_dir: Path, tiny_h5: Path, keras_mod: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    unit = tmp_path / "unit"
    shutil.copytree(models_dir, unit)
    nudged = _perturbed_tflite(tiny_h5, keras_mod, tmp_path)
    shutil.copy(nudged, unit / "tiny_f32.tflite")
    manifest = json.loads((unit / "tiny_f32.json").read_text())
    manifest["tflite"].update(sha256=mf.sha256_file(nudged), size_bytes=nudged.stat().st_size)
    (unit / "tiny_f32.json").write_text(json.dumps(manifest))  # replaced as a careless copy would: sha256 fixed up
    capsys.readouterr()
    assert edge_main(["verify-model", "tiny_f32", "--models-dir", str(unit)]) == 1
    line = capsys.readouterr().out
    assert ": FAILED: 32 images, max |p - p_converter| " in line and "(allowance 0.0010)" in line, line
    figure = float(line.split("max |p - p_converter| ")[1].split()[0])
    assert figure > 0.001


def test_an_int8_model_calibrated_on_black_images_is_refused_on_the_unit(
        models_dir: Path, tiny_h5: Path, synth_eval: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A conversion forced through: int8 calibrated on five black images says about the same p to everything. It
    reproduces its own verification set (its converter's p), and its old tolerance (its own worst error plus the
    allowance) passed it everywhere; its confident calls are what give it away, and its parity record."""
    import cv2

    from converter.cli import main as convert

    black = tmp_path / "black"
    for i, label in enumerate(("good", "defect", "good", "defect", "good")):
        (black / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(black / label / f"{i}.png"), np.zeros((64, 64, 3), np.uint8))
    out = tmp_path / "forced"
    assert convert(["convert", str(tiny_h5), "--quantize", "int8", "--calibration", str(black), "--name", "dark",
                    "--out-dir", str(out), "--eval", str(synth_eval), "--min-agreement", "0", "--force"]) == 0
    data = json.loads((out / "dark.verify.json").read_text())
    old_tolerance = data["tolerance"]["max_abs_dp"]
    said = capsys.readouterr().err
    assert "warning: units will refuse dark: of its confident calls" in said and "defective 0 of 1" in said, said
    assert edge_main(["verify-model", "dark", "--models-dir", str(out)]) == 1
    line = capsys.readouterr().out
    kept, far = (int(x) for x in line.split("defective ")[1].split(" (")[0].split(",")[0].split(" of "))
    assert ": FAILED: " in line and far >= 1 and kept / far < 0.9, line
    assert re.search(r"good (\d+) of \1\b", line), "its good calls all stay: only a side counted alone tells"
    drift = float(line.split("max |p - p_converter| ")[1].split()[0])
    assert drift <= 0.1, "its own p it reproduces: drift alone would not tell"
    worst = float(line.split("max |p - p_keras| ")[1].split(",")[0])
    assert worst <= old_tolerance, f"the old check passed it: {worst} within {old_tolerance}"
    assert edge_main(["models", "add", str(out / "dark"), "--models-dir", str(tmp_path / "unit")]) == 2
    assert "below model.min_agreement" in capsys.readouterr().err
    print(f"\nblack-calibrated int8: {line.strip()}\nold tolerance {old_tolerance:.3f}")


def test_a_changed_or_missing_verification_set_is_named(models_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    unit = tmp_path / "unit"
    shutil.copytree(models_dir, unit)
    first = sorted((unit / "tiny_f32.verify").iterdir())[0]
    first.write_bytes(first.read_bytes()[:-10])
    assert edge_main(["verify-model", "tiny_f32", "--models-dir", str(unit)]) == 2
    assert f"verification image tiny_f32.verify/{first.name} is missing or changed" in capsys.readouterr().err
    (unit / "tiny_f32.verify.json").unlink()
    assert edge_main(["verify-model", "tiny_f32", "--models-dir", str(unit)]) == 2
    assert "verification set tiny_f32.verify.json is missing" in capsys.readouterr().err
    assert edge_main(["verify-model", "mobilenetv2", "--models-dir", str(Path(__file__).parents[1] / "models")]) == 0
    assert "mobilenetv2 on ai_edge_litert: OK: 32 images" in capsys.readouterr().out  # the committed demo model
    old = mf.load(unit / "tiny_f32.json").model_copy(update={"verification": None})  # converted before sets
    (unit / "tiny_f32.json").write_text(old.to_json())
    assert edge_main(["verify-model", "tiny_f32", "--models-dir", str(unit)]) == 0
    assert "not verified: the manifest has no verification set" in capsys.readouterr().out


def test_models_add_installs_every_file_the_manifest_names_after_proving_it(
        models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``install.sh``'s hint once copied NAME.{tflite,json,h5} and left out NAME.verify.json and NAME.verify/, so a
    unit that followed it refused the model. One command installs it whole, proven here first, or nothing."""
    from core.models import list_models

    unit = tmp_path / "unit-models"
    agreement = mf.load(models_dir / "tiny.json").parity["agreement"]  # forced through with --min-agreement 0
    above = agreement + 0.01
    assert edge_main(["models", "add", str(models_dir / "tiny"), "--models-dir", str(unit),
                      "--min-agreement", str(above)]) == 2
    err = capsys.readouterr().err
    assert f"agreed with Keras on {agreement:.1%}" in err and f"below model.min_agreement {above:.1%}" in err, err
    assert edge_main(["models", "add", str(models_dir / "tiny"), "--models-dir", str(unit),
                      "--min-agreement", str(agreement)]) == 0
    assert "OK" in capsys.readouterr().out
    m = mf.load(unit / "tiny.json")
    assert list_models(unit) == ["tiny"] and (unit / "tiny.verify.json").is_file()
    assert m.signature is None or (unit / m.signature.file.path).is_file()
    assert any((unit / "tiny.verify").iterdir()), "the verification images came too"
    assert not [p for p in unit.iterdir() if p.name.startswith(".adding-")], "no staging left behind"

    broken = tmp_path / "broken"
    shutil.copytree(models_dir, broken)
    (broken / "tiny_f32.verify.json").unlink()
    assert edge_main(["models", "add", str(broken / "tiny_f32"), "--models-dir", str(unit)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "tiny_f32.verify.json is missing" in err, err
    (broken / "tiny_f32.tflite").write_bytes(b"\0" * 64)
    assert edge_main(["models", "add", str(broken / "tiny_f32.json"), "--models-dir", str(unit)]) == 2
    assert "sha256" in capsys.readouterr().err
    assert list_models(unit) == ["tiny"], "a refused model installs nothing"
