"""The manifest: schema validation, sha256 verification, and one clear line for each way it can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import manifest as mf


def write_model(folder: Path) -> Path:
    """A manifest for a fake model file (the manifest layer does not open the model itself)."""
    tfl = folder / "m.tflite"
    tfl.write_bytes(b"TFL3 not really a model")
    h5 = folder / "m.h5"
    h5.write_bytes(b"h5")
    m = mf.Manifest(
        name="m", architecture="cnn", quantization="int8", tflite=mf.file_ref(tfl, folder),
        source=mf.file_ref(h5, folder),
        input=mf.InputSpec(height=8, width=8, dtype="uint8", scale=1 / 255),
        output=mf.OutputSpec(dtype="uint8", scale=1 / 256), gradcam=mf.GradCamSpec(layer="conv2d_3"))
    path = folder / "m.json"
    mf.write_atomic(path, m.to_json().encode())
    return path


def test_round_trip(tmp_path: Path) -> None:
    path = write_model(tmp_path)
    m = mf.load(path)
    assert m.name == "m" and m.input.scale == pytest.approx(1 / 255) and m.tflite.path == "m.tflite"
    assert json.loads(path.read_text())["schema"] == 1
    assert mf.resolve(path, m.source) == tmp_path / "m.h5"


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    path = write_model(tmp_path)
    (tmp_path / "m.tflite").write_bytes(b"something else")
    with pytest.raises(mf.ManifestError, match=r"sha256 of m.tflite is .* manifest says .* re-convert it"):
        mf.load(path)


def test_missing_manifest_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(mf.ManifestError, match="manifest missing"):
        mf.load(tmp_path / "nope.json")
    path = write_model(tmp_path)
    (tmp_path / "m.tflite").unlink()
    with pytest.raises(mf.ManifestError, match=r"model file .*m\.tflite is missing"):
        mf.load(path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(schema=2), "schema 2 is not supported"),
    (lambda d: d.pop("input"), "manifest malformed: input: Field required"),
    (lambda d: d.update(colour="RGB"), "manifest malformed: colour: Extra inputs are not permitted"),
    (lambda d: d["decision"].update(threshold=1.5), "decision.threshold: Input should be less than or equal to 1"),
    (lambda d: d["output"].update(defect_index=1), "a sigmoid output has one column"),
])
def test_malformed_manifests_name_the_key(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = write_model(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(mf.ManifestError) as err:
        mf.load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(mf.ManifestError, match="manifest unreadable"):
        mf.load(path)


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    mf.write_atomic(tmp_path / "a.bin", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
