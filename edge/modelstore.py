"""``defect-edge models add DIR/NAME``: a converted model into the unit's models folder, whole and proven, or not
at all.

A model is several files: the manifest, the ``.tflite``, the Keras file heatmaps need, the signature of what it has
seen, and the verification set (``NAME.verify.json`` and the images in ``NAME.verify/``). Copied by hand, one was
often left out (the install hint once copied three of them, and a unit that followed it refused the model). Here the
manifest says which files belong to the model; each is checked against the sha256 it records, copied into a staging
folder inside the models folder, and the staged model is loaded and re-proves its parity on this unit's runtime
(:func:`core.verify.verify`) before anything is moved into place. The manifest moves last: until it does, the unit
still sees the model it had (a half-installed update is refused by the sha256 check, never run).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from core import manifest as mf
from core.classifier import Classifier
from core.verify import VerificationError, VerifyReport, load_set, recorded_parity_problem, verify


class InstallError(ValueError):
    """A model that cannot be installed as given; the message says which file and why."""


def source_manifest(source: Path) -> Path:
    """``DIR/NAME``, ``DIR/NAME.json`` or ``DIR/NAME.tflite``: the manifest they name."""
    path = source if source.suffix == ".json" else source.with_suffix(".json")
    if not path.is_file():
        raise InstallError(f"{path}: no model manifest there (give DIR/NAME, as defect-convert wrote it)")
    return path


def files_of(manifest_path: Path, m: mf.Manifest) -> list[Path]:
    """Every file and folder the model needs, beside its manifest; :class:`InstallError` for one missing or not
    matching the sha256 the manifest records."""
    out = [manifest_path]
    refs = [("model", m.tflite), ("Keras file (heatmaps)", m.source),
            *([("signature", m.signature.file)] if m.signature else []),
            *([("verification set", m.verification)] if m.verification else [])]
    for what, ref in refs:
        path = mf.resolve(manifest_path, ref)
        if path.parent != manifest_path.parent:
            if what.startswith("Keras"):
                continue  # a SavedModel elsewhere: heatmaps need it where the converter left it
            raise InstallError(f"{manifest_path.name}: its {what} {ref.path} is not beside it")
        if not path.is_file():
            if what.startswith("Keras"):
                continue  # no heatmaps on this unit, said by the Grad-CAM worker when asked
            raise InstallError(f"{manifest_path.name}: its {what} {path.name} is missing")
        if mf.sha256_file(path) != ref.sha256:
            raise InstallError(f"{manifest_path.name}: its {what} {path.name} does not match the manifest's sha256")
        out.append(path)
    if m.verification is not None:  # and the folders its images are in (NAME.verify/)
        images = [Path(item["file"]) for item in load_set(manifest_path, m)["images"]]
        for name in sorted({f.parts[0] for f in images if len(f.parts) == 2}):
            folder = manifest_path.parent / name
            if not folder.is_dir():
                raise InstallError(f"{manifest_path.name}: its verification images ({name}/) are missing")
            out.append(folder)
    return out


def add(source: Path, models_dir: Path, *, num_threads: int | None = None, min_agreement: float = 0.99
        ) -> VerifyReport:
    """Install the model ``source`` names into ``models_dir`` (see the module's docstring); returns its parity
    report on this unit. Raises :class:`InstallError` or :class:`VerificationError` (a parity record below
    ``min_agreement`` too: the unit would refuse to run it), leaving ``models_dir`` as it was."""
    manifest_path = source_manifest(source)
    try:
        m = mf.load(manifest_path)
    except mf.ManifestError as e:
        raise InstallError(str(e)) from None
    problem = recorded_parity_problem(m, min_agreement)
    if problem:
        raise VerificationError(problem)
    files = files_of(manifest_path, m)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".adding-{m.name}-", dir=models_dir))
    try:
        for f in files:
            if f.is_dir():
                shutil.copytree(f, staging / f.name)
            else:
                shutil.copy2(f, staging / f.name)
        staged = staging / manifest_path.name
        report = verify(Classifier(staged, num_threads=num_threads))
        if not report.ok:
            raise VerificationError(report.line())
        for f in sorted(staging.iterdir(), key=lambda p: p.suffix == ".json" and p.name == manifest_path.name):
            target = models_dir / f.name
            if target.is_dir():
                shutil.rmtree(target)
            f.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
