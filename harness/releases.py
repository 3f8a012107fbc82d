"""Models to publish as releases in tests: copies of a committed model, each version told apart by its manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core import manifest as mf
from edge.modelstore import files_of
from harness import REPO


def model_copy(folder: Path, stamp: str, name: str = "mobilenetv2") -> Path:
    """The committed model ``name`` without its .h5 (releases here carry no heatmaps), its manifest's
    ``created_at`` set to ``stamp``; returns DIR/NAME."""
    src = REPO / "models" / f"{name}.json"
    folder.mkdir(parents=True)
    for f in files_of(src, mf.load(src)):
        if f.suffix != ".h5":
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, folder / f.name)
    doc = json.loads((folder / f"{name}.json").read_text())
    doc["created_at"] = stamp
    doc["source"]["path"] = "none.h5"
    (folder / f"{name}.json").write_text(json.dumps(doc, indent=1))
    return folder / name


def break_verification(model: Path) -> None:
    """Make the model fail its parity proof on any unit, though every file matches its manifest: the verification
    set claims the converter's TFLite said the opposite of what it says (as a model converted wrongly would)."""
    manifest = model.with_suffix(".json")
    doc = json.loads(manifest.read_text())
    vs = model.parent / doc["verification"]["path"]
    data = json.loads(vs.read_text())
    for item in data["images"]:
        item["p_tflite"] = 1.0 - item["p_tflite"]
        item["p_keras"] = 1.0 - item["p_keras"]
    vs.write_text(json.dumps(data))
    doc["verification"]["sha256"] = mf.sha256_file(vs)
    doc["verification"]["size_bytes"] = vs.stat().st_size
    manifest.write_text(json.dumps(doc, indent=1))
