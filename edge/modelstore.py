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
from edge import variants as vr
from edge.variants import VariantError
from edge.variants import candidates as variant_candidates


class InstallError(ValueError):
    """A model that cannot be installed as given; the message says which file and why."""


def source_manifest(source: Path) -> Path:
    """``DIR/NAME``, ``DIR/NAME.json`` or ``DIR/NAME.tflite``: the manifest they name."""
    path = source if source.suffix == ".json" else source.with_suffix(".json")
    if not path.is_file():
        raise InstallError(f"{path}: no model manifest there (give DIR/NAME, as defect-convert wrote it)")
    return path


def files_of(manifest_path: Path, m: mf.Manifest, *, variants: bool = True) -> list[Path]:
    """Every file and folder the model needs, beside its manifest, and (``variants``) those of every variant it
    names; :class:`InstallError` for one missing or not matching the sha256 the manifest records."""
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
    try:
        others = variant_candidates(manifest_path, m)[1:] if variants else []
    except VariantError as e:
        raise InstallError(str(e)) from None
    for _, path in others:  # each variant's own files, and what it shares with the model (once)
        out += [f for f in files_of(path, _load(path)) if f not in out]
    return out


def _load(manifest_path: Path) -> mf.Manifest:
    try:
        return mf.load(manifest_path)
    except mf.ManifestError as e:
        raise InstallError(str(e)) from None


def add(source: Path, models_dir: Path, *, num_threads: int | None = None, min_agreement: float = 0.99,
        memory_budget_mb: float = 0.0, measured: list[vr.Timed] | None = None) -> VerifyReport:
    """Install the model ``source`` names into ``models_dir`` (see the module's docstring); returns its parity
    report on this unit. Raises :class:`InstallError` or :class:`VerificationError` (a parity record below
    ``min_agreement`` too: the unit would refuse to run it), leaving ``models_dir`` as it was.

    A model converted with variants is installed as the one chosen here (:func:`edge.variants.choose`, or
    ``measured``: what a rollout already measured), under the model's own names (``NAME.tflite``,
    ``NAME.verify.json``), with the table of what was measured beside it (``NAME.variants.json``)."""
    manifest_path = given = source_manifest(source)
    m = _load(manifest_path)
    chosen, table = m, b""
    if m.variants:
        try:
            rows = measured or vr.choose(manifest_path, num_threads=num_threads, memory_budget_mb=memory_budget_mb)
            _, manifest_path = vr.chosen(rows, manifest_path)
            if manifest_path not in dict(variant_candidates(given, m)).values():
                raise InstallError(f"{m.name}: the variant measured ({manifest_path.name}) is not one it names")
        except VariantError as e:
            raise InstallError(str(e)) from None
        chosen = _load(manifest_path)
        table = vr.table_json(rows, num_threads, chosen.tflite.sha256)
    elif vr.load_table(given.parent, given.stem, m.tflite.sha256) is not None:  # put back by a rollback
        table = vr.table_path(given.parent, given.stem).read_bytes()
    problem = recorded_parity_problem(chosen, min_agreement)
    if problem:
        raise VerificationError(problem)
    files = files_of(manifest_path, chosen, variants=False)
    name = given.stem  # installed under the name it was given, whichever variant runs
    renamed = {mf.resolve(manifest_path, chosen.tflite): f"{name}.tflite",
               **({mf.resolve(manifest_path, chosen.verification): f"{name}.verify.json"}
                  if chosen.verification else {})} if m.variants else {}
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".adding-{chosen.name}-", dir=models_dir))
    try:
        for f in files[1:]:
            if f.is_dir():
                shutil.copytree(f, staging / f.name)
            else:
                shutil.copy2(f, staging / renamed.get(f, f.name))
        staged = staging / f"{name}.json"
        if m.variants:  # the installed model is the one chosen, under the model's own names, naming no others
            mf.write_atomic(staged, chosen.model_copy(update={
                "tflite": chosen.tflite.model_copy(update={"path": f"{name}.tflite"}),
                "verification": chosen.verification.model_copy(update={"path": f"{name}.verify.json"})
                if chosen.verification else None, "variants": ()}).to_json().encode())
        else:
            shutil.copy2(manifest_path, staged)
        if table:
            (staging / vr.table_path(staging, name).name).write_bytes(table)
        report = verify(Classifier(staged, num_threads=num_threads))
        if not report.ok:
            raise VerificationError(report.line())
        for f in sorted(staging.iterdir(), key=lambda p: p.name == staged.name):
            target = models_dir / f.name
            if target.is_dir():
                shutil.rmtree(target)
            f.replace(target)
        if not table:  # a table of an earlier install describes another model
            vr.table_path(models_dir, name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
