"""The variant a unit runs: of the conversions of one model that met parity, the fastest on this unit's own runtime,
threads and delegate, within its memory budget (``docs/releases.md``).

The converter chooses on the machine it converts on, where int8 was barely faster than float and float16 was
shipped for MobileNetV2; on a Pi's NEON int8 is the fast one, and float16 is unpacked to float32 when it is loaded
(peak RSS 165 MB against 116 MB). So ``defect-convert`` writes every variant that met parity beside the one it chose
(``NAME~QUANTIZATION.json``, each with its .tflite and verification set), the manifest names them, and here each is:

- proven on this unit (:func:`core.verify.verify`): a variant that does not reproduce its set is out;
- timed in turns with the others (:func:`core.timing.interleaved_latency`), on the unit's threads;
- weighed: the memory it adds to a process, measured in a process of its own (a model's arena and unpacked weights
  are freed to the allocator, not to the system, so a second model measured in the same process looks free).

The fastest that passes and fits runs; within 5 % of it, the one that agrees with Keras most, then the smallest
(:func:`core.timing.quickest`, the converter's own rule). The table is kept beside the installed model
(``NAME.variants.json``) and shown in the unit's status and on the console.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import manifest as mf
from core.classifier import Classifier
from core.runtime import RuntimeUnavailableError, find_runtime
from core.timing import interleaved_latency, quickest
from core.verify import verify

# What loading or proving a variant can raise: a bad file, a runtime that cannot run it, a set it does not reproduce.
LOAD_ERRORS = (mf.ManifestError, RuntimeUnavailableError, ValueError)


class VariantError(ValueError):
    """No variant of a model can run here; the message names each and why."""


@dataclass(frozen=True)
class Timed:
    """One variant as this unit measured it."""

    quantization: str
    manifest: str  # its manifest's file name, beside the model's own
    verified: bool
    verify: str  # the proof's line, or why the variant could not be loaded
    latency_ms: float | None = None  # median classify() on the unit's threads
    memory_mb: float | None = None  # what it adds to a process's peak resident memory
    agreement: float | None = None  # its conversion's recorded agreement with Keras
    size_bytes: int = 0
    chosen: bool = False
    reason: str = ""


def candidates(manifest_path: Path, m: mf.Manifest) -> list[tuple[str, Path]]:
    """The model as its manifest describes it, then each variant it names, each manifest checked against the
    sha256 recorded for it (its own .tflite and set are checked by its loading)."""
    out: list[tuple[str, Path]] = [(m.quantization, manifest_path)]
    for v in m.variants:
        path = mf.resolve(manifest_path, v.manifest)
        if path.parent != manifest_path.parent or not path.is_file():
            raise VariantError(f"{manifest_path.name}: its {v.quantization} variant {v.manifest.path} is missing")
        if mf.sha256_file(path) != v.manifest.sha256:
            raise VariantError(f"{manifest_path.name}: its {v.quantization} variant {path.name} does not match the "
                               "manifest's sha256")
        out.append((v.quantization, path))
    return out


def memory_mb(manifest_path: Path, num_threads: int | None) -> float:
    """MB a model adds to the peak resident memory of a process that loads it and classifies (this module's
    ``__main__``, in a process of its own)."""
    done = subprocess.run([sys.executable, "-m", "edge.variants", str(manifest_path), str(num_threads or 0)],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode:
        raise VariantError(f"{manifest_path.name}: measuring its memory failed: "
                           f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return float(done.stdout.split()[-1])


def _kb(field: str) -> int:
    with Path("/proc/self/status").open() as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def _probe(manifest_path: Path, num_threads: int) -> float:
    find_runtime()  # the runtime's own library is the unit's whichever model it runs
    before = _kb("VmRSS")
    clf = Classifier(manifest_path, num_threads=num_threads or None)
    frame = np.full((clf.manifest.input.height, clf.manifest.input.width, 3), 128, np.uint8)
    for _ in range(3):
        clf.classify(frame)
    return (_kb("VmHWM") - before) / 1024


def choose(manifest_path: Path, *, num_threads: int | None = None, memory_budget_mb: float = 0.0,
           measure_memory: bool = True) -> list[Timed]:
    """Every candidate of the model at ``manifest_path``, measured here, exactly one of them ``chosen``;
    :class:`VariantError` when none can run. ``memory_budget_mb``: the most a model may add to the unit's memory
    (0: no bound)."""
    rows: list[Timed] = []
    loaded: list[tuple[Timed, Classifier]] = []
    for quantization, path in candidates(manifest_path, mf.load(manifest_path)):
        try:
            clf = Classifier(path, num_threads=num_threads)
            report = verify(clf)
        except LOAD_ERRORS as e:
            rows.append(Timed(quantization, path.name, False, str(e)))
            continue
        agreement = clf.manifest.parity.get("agreement")
        row = Timed(quantization, path.name, report.ok, report.line(),
                    agreement=float(agreement) if isinstance(agreement, int | float) else None,
                    size_bytes=clf.manifest.tflite.size_bytes or 0)
        rows.append(row)
        if report.ok:
            loaded.append((row, clf))
    if not loaded:
        raise VariantError(f"{manifest_path.stem}: no variant runs here: "
                           + "; ".join(f"{r.quantization}: {r.verify}" for r in rows))
    input_spec = loaded[0][1].manifest.input
    frame = np.full((input_spec.height, input_spec.width, 3), 128, np.uint8)
    latencies = interleaved_latency([clf for _, clf in loaded], frame, rounds=12, per_round=3) \
        if len(loaded) > 1 else [float("nan")]
    del frame
    timed = []
    for (row, _), ms in zip(loaded, latencies, strict=True):
        weigh = measure_memory and (len(loaded) > 1 or memory_budget_mb > 0)  # one alone runs unless bounded
        mem = memory_mb(manifest_path.parent / row.manifest, num_threads) if weigh else None
        timed.append(Timed(**{**asdict(row), "latency_ms": None if ms != ms else ms, "memory_mb": mem}))
    fits = [t for t in timed if not memory_budget_mb or t.memory_mb is None or t.memory_mb <= memory_budget_mb]
    if not fits:
        raise VariantError(f"{manifest_path.stem}: no variant fits model.memory_budget_mb {memory_budget_mb:g}: "
                           + ", ".join(f"{t.quantization} {t.memory_mb:.0f} MB" for t in timed))
    pick = fits[quickest([t.latency_ms or 0.0 for t in fits], [t.agreement or 0.0 for t in fits],
                         [t.memory_mb or t.size_bytes for t in fits])] if len(fits) > 1 else fits[0]
    out = {t.quantization: t for t in timed}
    for t in timed:
        out[t.quantization] = Timed(**{**asdict(t), "chosen": t is pick,
                                        "reason": _reason(t, pick, memory_budget_mb, len(timed))})
    return [out.get(r.quantization, r) for r in rows]


def _reason(t: Timed, pick: Timed, budget: float, passed: int) -> str:
    if t is pick:
        return ("chosen: the fastest here that passed" if passed > 1 else "chosen: the only one that passed here") \
            + (f" and fits {budget:g} MB" if budget else "")
    if budget and t.memory_mb is not None and t.memory_mb > budget:
        return f"over the memory budget: {t.memory_mb:.0f} MB against {budget:g} MB"
    if t.latency_ms is not None and pick.latency_ms is not None and t.latency_ms > pick.latency_ms:
        return f"slower here: {t.latency_ms:.2f} ms against {pick.latency_ms:.2f} ms"
    return "as fast here; agrees less with Keras, or takes more memory"


def table_path(models_dir: Path, name: str) -> Path:
    """Where the installed model's table is kept: beside its manifest, not a model itself (no .tflite of its
    name)."""
    return models_dir / f"{name}.variants.json"


def table_json(rows: list[Timed], num_threads: int | None, sha256: str) -> bytes:
    """The table as kept beside the installed model: which .tflite it chose (by sha256), on how many threads."""
    return (json.dumps({"sha256": sha256, "threads": num_threads, "variants": [asdict(r) for r in rows]}, indent=1)
            + "\n").encode()


def load_table(models_dir: Path, name: str, sha256: str) -> list[dict[str, Any]] | None:
    """The table of the model installed as ``name``, if it was chosen among variants and is still the one there."""
    try:
        doc = json.loads(table_path(models_dir, name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("sha256") != sha256 or not isinstance(doc.get("variants"), list):
        return None
    return list(doc["variants"])


def chosen(rows: list[Timed], manifest_path: Path) -> tuple[str, Path]:
    """The chosen row's quantization and manifest."""
    row = next(r for r in rows if r.chosen)
    return row.quantization, manifest_path.parent / row.manifest


if __name__ == "__main__":  # memory_mb's probe: python -m edge.variants MANIFEST THREADS
    print(f"{_probe(Path(sys.argv[1]), int(sys.argv[2])):.1f}")
