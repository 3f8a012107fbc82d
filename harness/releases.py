"""Models to publish as releases in tests: copies of a committed model, each version told apart by its manifest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from converter import release
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


@contextmanager
def flipped_byte(path: Path) -> Iterator[None]:
    """One bit of ``path`` flipped in its middle while inside, as a disk or a wire might; put back after."""
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    path.write_bytes(bytes(bad))
    try:
        yield
    finally:
        path.write_bytes(good)


@contextmanager
def forged_timestamp(repo: release.Repo) -> Iterator[None]:
    """A newer timestamp signed by a key the repository's root does not name, while inside."""
    saved = (repo.metadata / "timestamp.json").read_bytes()
    forged = repo.load("timestamp")
    forged.signed.version += 1
    forged.signatures.clear()
    forged.sign(CryptoSigner.generate_ed25519())
    repo.write(forged, "timestamp")
    try:
        yield
    finally:
        (repo.metadata / "timestamp.json").write_bytes(saved)
