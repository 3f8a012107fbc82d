"""``defect-convert convert``: one ``.h5`` → ``NAME.tflite`` + ``NAME.json`` manifest + ``NAME.parity.{json,md,png}``.

Each candidate quantization is converted into a temporary file, loaded by the edge's own classifier and checked for
parity; only the accepted one is renamed into place, with its manifest written last. A crash or a rejection leaves
no half-written model behind, and an older model of the same name stays untouched until a new one has passed.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converter import report, synth
from converter.convert import QUANTIZATIONS, ConversionError, to_tflite
from converter.dataset import LabelledFolder, open_folder
from converter.keras_compat import ModelInfo, inspect, load_model
from converter.parity import KerasReference, compare, keras_reference
from edge import manifest as mf
from edge.classifier import Classifier
from edge.preprocess import Preprocessor, pixel_affine
from edge.runtime import create_interpreter
from edge.tfload import tf_keras

SYNTHETIC_CALIBRATION_SEED = 1_000  # series never used for training, so calibration and evaluation are unseen parts
SYNTHETIC_EVAL_SEED = 2_000
SYNTHETIC_EVAL_COUNT = 300


@dataclass(frozen=True)
class ConvertSettings:
    quantize: str = "auto"
    name: str = "model"
    calibration: Path | None = None
    calibration_count: int = 200
    eval_folder: Path | None = None
    eval_limit: int | None = None
    min_agreement: float = 0.99
    int8_io: Literal["uint8", "int8"] = "uint8"
    gradcam_layer: str | None = None
    pixel_scaling: mf.PixelScaling = "unit"
    defect_index: int = 1  # softmax2 models only: the column that means defective
    seed: int = 0


@dataclass
class ConvertResult:
    chosen: str | None
    tflite_path: Path
    manifest_path: Path
    report_path: Path
    report: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def _versions() -> dict[str, str]:
    tf, keras = tf_keras()
    out = {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
           "numpy": np.__version__}
    for dist in ("defect-inspection", "ai-edge-litert"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _synthetic_frames(seed: int, count: int, size: int) -> list[tuple[int, np.ndarray]]:
    return [(int(p.defective), p.image) for p in synth.iter_parts(seed, count, size=size)]


def _calibration(settings: ConvertSettings, pre: Preprocessor, size: int) -> np.ndarray:
    """Representative inputs from both classes (a one-class set would clip p_defect to its range)."""
    if settings.calibration:
        folder = open_folder(settings.calibration).sample(settings.calibration_count, settings.seed)
        frames: Iterable[tuple[Any, int, np.ndarray]] = folder.frames()
    else:
        frames = ((None, lab, f) for lab, f in _synthetic_frames(SYNTHETIC_CALIBRATION_SEED,
                                                                 settings.calibration_count, size))
    xs = np.stack([pre(f) for _, _, f in frames])
    # Pin the observed input range to the full pixel range, so the uint8 model's input scale is exactly one pixel
    # step and the edge feeds raw pixels with no arithmetic (docs/unit.md). Two pixels barely move any activation range.
    factor, offset = pixel_affine(settings.pixel_scaling)
    xs[0, 0, 0, :] = offset
    xs[0, 0, 1, :] = 255 * factor + offset
    return xs


def _spec_from_tensor(details: dict[str, Any], base: mf.InputSpec) -> mf.InputSpec:
    scale, zp = details["quantization"]
    dtype = np.dtype(details["dtype"]).name
    return base.model_copy(update={"dtype": dtype, "scale": float(scale) if dtype != "float32" else 0.0,
                                   "zero_point": int(zp) if dtype != "float32" else 0})


def _manifest(name: str, quantization: str, tflite: Path, h5: Path, info: ModelInfo, keras_spec: mf.InputSpec,
              settings: ConvertSettings, parity: dict[str, Any], versions: dict[str, str]) -> mf.Manifest:
    interp, _ = create_interpreter(tflite, num_threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    out_dtype = np.dtype(out["dtype"]).name
    o_scale, o_zp = out["quantization"]
    quantized_out = out_dtype != "float32"
    return mf.Manifest.model_validate({
        "name": name, "architecture": info.architecture, "quantization": quantization,
        "tflite": mf.file_ref(tflite, tflite.parent), "source": mf.file_ref(h5, tflite.parent),
        "input": _spec_from_tensor(inp, keras_spec),
        "output": {"kind": info.output_kind,
                   "defect_index": settings.defect_index if info.output_kind == "softmax2" else 0,
                   "dtype": out_dtype, "scale": float(o_scale) if quantized_out else 0.0,
                   "zero_point": int(o_zp) if quantized_out else 0},
        "gradcam": {"layer": info.gradcam_layer}, "parity": parity, "versions": versions,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })


def _eval_source(settings: ConvertSettings, size: int) -> tuple[Any, str, LabelledFolder | None]:
    if settings.eval_folder:
        folder = open_folder(settings.eval_folder).sample(settings.eval_limit, settings.seed + 1)

        def frames() -> Iterable[tuple[int, np.ndarray]]:
            return ((label, frame) for _, label, frame in folder.frames())

        return frames, str(settings.eval_folder), folder
    synthetic = _synthetic_frames(SYNTHETIC_EVAL_SEED, settings.eval_limit or SYNTHETIC_EVAL_COUNT, size)
    return (lambda: synthetic), f"synthetic parts (seed {SYNTHETIC_EVAL_SEED})", None


def convert_h5(h5: Path, out_dir: Path, settings: ConvertSettings) -> ConvertResult:
    model = load_model(h5)
    info = inspect(model, h5, gradcam_layer=settings.gradcam_layer)
    keras_spec = mf.InputSpec(height=info.height, width=info.width, dtype="float32",
                              pixel_scaling=settings.pixel_scaling)
    keras_pre = Preprocessor(keras_spec)
    size = max(info.height, info.width)
    frames, eval_name, folder = _eval_source(settings, size)
    defect_index = settings.defect_index if info.output_kind == "softmax2" else 0
    ref: KerasReference = keras_reference(model, keras_pre, frames, defect_index=defect_index)
    if len(set(ref.labels.tolist())) < 2:
        raise ValueError(f"{eval_name}: evaluation needs both classes")
    candidates = list(QUANTIZATIONS) if settings.quantize == "auto" else [settings.quantize]
    calib = _calibration(settings, keras_pre, size) if "int8" in candidates else None
    versions = _versions()
    name = settings.name
    final_tflite, final_manifest = out_dir / f"{name}.tflite", out_dir / f"{name}.json"
    rows: list[dict[str, Any]] = []
    chosen: tuple[str, Path, dict[str, Any]] | None = None
    tmp_files: list[Path] = []
    try:
        for q in candidates:
            row: dict[str, Any] = {"quantization": q}
            rows.append(row)
            if chosen is not None:
                row.update(verdict="skipped", reason=f"{chosen[0]} already met parity")
                continue
            try:
                data = to_tflite(model, q, representative=calib, int8_io=settings.int8_io)
            except ConversionError as e:
                row.update(verdict="failed", reason=str(e))
                continue
            tmp = out_dir / f".{name}.{q}.tmp.tflite"
            tmp_man = out_dir / f".{name}.{q}.tmp.json"
            tmp_files += [tmp, tmp_man]
            mf.write_atomic(tmp, data)
            mf.write_atomic(tmp_man, _manifest(name, q, tmp, h5, info, keras_spec, settings, {}, versions)
                            .to_json().encode())
            figures = compare(ref, Classifier(tmp_man, num_threads=1), frames)
            p_tfl = figures.pop("p_tflite")
            row.update(figures, size_bytes=len(data))
            if figures["agreement"] >= settings.min_agreement:
                row["verdict"] = "accepted"
                chosen = (q, tmp, row)
                row["_p"] = p_tfl
            else:
                row.update(verdict="rejected", reason=f"agreement {figures['agreement']:.4f} < "
                                                      f"{settings.min_agreement} ({figures['disagreements']} "
                                                      f"decisions differ)", _p=p_tfl)
        shown = chosen[2] if chosen else next((r for r in reversed(rows) if "_p" in r), None)
        result: dict[str, Any] = {
            "name": name, "source": str(h5), "source_size_bytes": h5.stat().st_size,
            "architecture": info.architecture, "keras_file_version": info.keras_version,
            "eval": {"folder": eval_name, "n": len(ref.p),
                     "unreadable_skipped": len(folder.skipped) if folder else 0,
                     "good": int((ref.labels == 0).sum()), "defect": int((ref.labels == 1).sum())},
            "threshold": mf.Decision().threshold, "min_agreement": settings.min_agreement,
            "chosen": chosen[0] if chosen else None,
            "candidates": [{k: v for k, v in r.items() if k != "_p"} for r in rows],
            "versions": versions,
        }
        report_json = out_dir / f"{name}.parity.json"
        mf.write_atomic(report_json, (json.dumps(result, indent=2) + "\n").encode())
        mf.write_atomic(out_dir / f"{name}.parity.md", report.parity_markdown(result).encode())
        if shown is not None:
            png = out_dir / f".{name}.parity.tmp.png"
            tmp_files.append(png)
            report.parity_png(ref.p, shown["_p"], ref.labels, result["threshold"], png,
                              title=f"{name} ({shown['quantization']}): agreement {shown['agreement']:.4f}")
            png.replace(out_dir / f"{name}.parity.png")
        if chosen:
            q, tmp, row = chosen
            tmp.replace(final_tflite)
            parity = {k: row[k] for k in ("agreement", "accuracy_keras", "accuracy_tflite", "mean_abs_dp",
                                          "max_abs_dp", "auc_keras", "auc_tflite", "latency_ms_tflite",
                                          "latency_ms_keras", "size_bytes")}
            parity.update(eval=eval_name, n=len(ref.p), min_agreement=settings.min_agreement)
            m = _manifest(name, q, final_tflite, h5, info, keras_spec, settings, parity, versions)
            mf.write_atomic(final_manifest, m.to_json().encode())
    finally:
        for t in tmp_files:
            t.unlink(missing_ok=True)
    print(f"parity evaluated on {len(ref.p)} images of {eval_name}", file=sys.stderr)
    return ConvertResult(chosen=chosen[0] if chosen else None, tflite_path=final_tflite,
                         manifest_path=final_manifest, report_path=report_json, report=result,
                         skipped=folder.skipped if folder else [])
