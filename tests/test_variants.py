"""The variant a unit runs (edge/variants.py): the converter ships every conversion that met parity, and the unit
installs the fastest one on its own runtime that passes its proof there and fits its memory budget. On the model a
user would have, trained on the casting photos (converted with ``--quantize auto``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core import manifest as mf
from core.classifier import Classifier
from core.models import list_models
from core.timing import WITHIN
from core.verify import verify
from edge.cli import main as edge_main
from edge.modelstore import InstallError, add, files_of
from edge.variants import load_table

pytestmark = pytest.mark.processes  # each variant's memory is measured in a process of its own


def test_the_converter_ships_every_variant_that_met_parity(casting_model: Path) -> None:
    m = mf.load(casting_model)
    report = json.loads(casting_model.with_suffix(".parity.json").read_text())
    met = {c["quantization"] for c in report["candidates"] if c["verdict"] in ("passed", "accepted")}
    assert len(met) >= 2, f"auto on casting met parity with {met}: nothing to choose between"
    assert {v.quantization for v in m.variants} == met - {m.quantization}
    shipped = files_of(casting_model, m)
    chosen_set = json.loads((casting_model.parent / m.verification.path).read_text())  # type: ignore[union-attr]
    for v in m.variants:
        path = casting_model.parent / v.manifest.path
        variant = mf.load(path)
        assert path.name == f"casting~{v.quantization}.json" and variant.quantization == v.quantization
        assert variant.variants == () and variant.signature == m.signature and variant.input.width == m.input.width
        for ref in (v.manifest, variant.tflite, variant.verification):
            assert ref is not None and casting_model.parent / ref.path in shipped
        own = json.loads((casting_model.parent / variant.verification.path).read_text())  # type: ignore[union-attr]
        assert [i["file"] for i in own["images"]] == [i["file"] for i in chosen_set["images"]], "the same images"
        assert [i["p_keras"] for i in own["images"]] == [i["p_keras"] for i in chosen_set["images"]]
        here = verify(Classifier(path, num_threads=1))
        assert here.ok and here.drift is not None and here.drift <= 1e-6, "its own p, as this machine computes it"


def test_a_unit_installs_the_fastest_variant_that_passes_here(casting_model: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    assert edge_main(["models", "add", str(casting_model.with_suffix("")), "--models-dir", str(models),
                      "--threads", "1"]) == 0
    out = capsys.readouterr().out
    installed = mf.load(models / "casting.json")
    table = load_table(models, "casting", installed.tflite.sha256)
    assert table is not None and len(table) == 1 + len(mf.load(casting_model).variants)
    assert all(r["verified"] and r["latency_ms"] > 0 and r["memory_mb"] > 0 for r in table), table
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["latency_ms"] <= min(r["latency_ms"] for r in table) * WITHIN
    source = mf.load(casting_model.parent / chosen[0]["manifest"])
    assert installed.quantization == chosen[0]["quantization"] and installed.tflite.sha256 == source.tflite.sha256
    assert (installed.tflite.path, installed.variants) == ("casting.tflite", ())
    assert installed.verification is not None and installed.verification.path == "casting.verify.json"
    assert verify(Classifier(models / "casting.json", num_threads=1)).ok
    assert list_models(models) == ["casting"], "no variant is a model of its own on the unit"
    assert not list(models.glob("casting~*")), "only the one chosen is installed"
    assert f"* {chosen[0]['quantization']}" in out and "chosen: the fastest here" in out, out


def test_the_memory_budget_decides_a_rollback_keeps_the_table_and_nothing_fitting_is_refused(
        casting_model: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    add(casting_model.with_suffix(""), models, num_threads=1)
    table = load_table(models, "casting", mf.load(models / "casting.json").tflite.sha256)
    assert table is not None
    least = min(table, key=lambda r: r["memory_mb"])
    others = sorted(r["memory_mb"] for r in table if r is not least)
    assert others[0] - least["memory_mb"] > 0.5, f"the variants' memory should differ: {table}"
    budget = (least["memory_mb"] + others[0]) / 2
    tight = tmp_path / "tight"
    add(casting_model.with_suffix(""), tight, num_threads=1, memory_budget_mb=budget)
    assert mf.load(tight / "casting.json").quantization == least["quantization"]
    kept = load_table(tight, "casting", mf.load(tight / "casting.json").tflite.sha256)
    assert kept is not None and any("over the memory budget" in r["reason"] for r in kept)
    back = tmp_path / "back"  # what a rollback does with the files it set aside: the table comes back with them
    add(models / "casting", back, num_threads=1)
    assert load_table(back, "casting", mf.load(back / "casting.json").tflite.sha256) == table
    none = tmp_path / "none"
    with pytest.raises(InstallError, match=r"no variant fits model\.memory_budget_mb"):
        add(casting_model.with_suffix(""), none, num_threads=1, memory_budget_mb=least["memory_mb"] / 4)
    assert list_models(none) == []


def _rechain(folder: Path, variant: mf.Manifest, variant_path: Path) -> None:
    """After a variant's verification set was edited: its manifest, and the model's, record the new sha256s."""
    assert variant.verification is not None
    fixed = variant.model_copy(update={"verification": mf.file_ref(folder / variant.verification.path, folder)})
    variant_path.write_text(fixed.to_json())
    top = mf.load(folder / "casting.json")
    top = top.model_copy(update={"variants": tuple(
        v.model_copy(update={"manifest": mf.file_ref(variant_path, folder)}) if v.manifest.path == variant_path.name
        else v for v in top.variants)})
    (folder / "casting.json").write_text(top.to_json())


def test_a_variant_that_fails_its_proof_here_is_passed_over(casting_model: Path, tmp_path: Path) -> None:
    """A variant whose outputs here are not its converter's (its recorded p shifted by 0.5) is out, said, and
    another runs; so does one whose .tflite was swapped, which no release would publish."""
    folder = tmp_path / "release"
    folder.mkdir()
    for f in files_of(casting_model, mf.load(casting_model)):
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, folder / f.name)
    m = mf.load(folder / "casting.json")
    bad_path = folder / m.variants[0].manifest.path
    bad = mf.load(bad_path)
    assert bad.verification is not None
    doc = json.loads((folder / bad.verification.path).read_text())
    for item in doc["images"]:
        item["p_tflite"] = min(1.0, item["p_tflite"] + 0.5) if item["p_tflite"] < 0.5 else item["p_tflite"] - 0.5
    (folder / bad.verification.path).write_text(json.dumps(doc))
    _rechain(folder, bad, bad_path)
    models = tmp_path / "models"
    add(folder / "casting", models, num_threads=1)
    table = load_table(models, "casting", mf.load(models / "casting.json").tflite.sha256)
    assert table is not None
    refused = next(r for r in table if r["quantization"] == bad.quantization)
    assert not refused["verified"] and not refused["chosen"] and "FAILED" in refused["verify"]
    assert mf.load(models / "casting.json").quantization != bad.quantization

    (folder / bad.tflite.path).write_bytes((folder / bad.tflite.path).read_bytes()[:-1] + b"\x00")
    again = tmp_path / "again"
    add(folder / "casting", again, num_threads=1)
    table = load_table(again, "casting", mf.load(again / "casting.json").tflite.sha256)
    assert table is not None
    assert "replaced or corrupted" in next(r for r in table if r["quantization"] == bad.quantization)["verify"]
    with pytest.raises(InstallError, match="replaced or corrupted"):  # what a release would publish
        files_of(folder / "casting.json", mf.load(folder / "casting.json"))
