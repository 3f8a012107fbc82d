"""``defect-convert convert``: one Keras model (``.h5``, ``.keras``, SavedModel) → ``NAME.tflite`` + ``NAME.json``
manifest + ``NAME.parity.{json,md,png}``.

Before any conversion, the Keras model is read under every plausible convention against the evaluation folder's
labels (:mod:`converter.conventions`), so the manifest records how the model was trained, not a guess.

Each candidate quantization is converted into a temporary file, loaded by the edge's own classifier and checked for
parity; only the accepted one is renamed into place, with its manifest written last. A crash or a rejection leaves
no half-written model behind, and an older model of the same name stays untouched until a new one has passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from contract.payloads import CamMethod
from converter import conventions, explain, report, synth, verification
from converter.architectures import ARCHITECTURES
from converter.convert import (
    DEBUG_SAMPLES,
    MIXED_SHARES,
    QUANTIZATIONS,
    ConversionError,
    consumers,
    float_closure,
    layer_errors,
    to_tflite,
)
from converter.dataset import LabelledFolder, open_folder
from converter.errors import UserError
from converter.keras_compat import ModelInfo, fixed_size, inspect, load_model
from converter.parity import KerasReference, compare, keras_p, keras_reference
from converter.signature import FIT_IMAGES, with_features
from converter.signature import fit as fit_signature
from core import framing
from core import manifest as mf
from core.classifier import Classifier, split_outputs
from core.preprocess import Preprocessor, pixel_affine
from core.runtime import create_interpreter
from core.timing import WITHIN, interleaved_latency, quickest
from edge.tfload import tf_keras

SYNTHETIC_CALIBRATION_SEED = 1_000  # series never used for training, so calibration and evaluation are unseen parts
SYNTHETIC_EVAL_SEED = 2_000
SYNTHETIC_EVAL_COUNT = 300
WIDER_CALIBRATION = 3  # when int8 misses parity, auto calibrates again on this many times the images


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
    gradcam_layer: str | None = None  # None: chosen by measurement (converter/explain.py)
    gradcam_method: CamMethod | None = None  # likewise
    # None: not given on the command line; detected from the evaluation folder, else the default.
    pixel_scaling: mf.PixelScaling | None = None
    defect_class: int | None = None  # the output class meaning defective: 1 = p as it is, 0 = 1 - p (or column 0)
    color_order: Literal["RGB", "BGR"] | None = None
    input_size: tuple[int, int] | None = None  # (width, height) for a model that takes any size
    force: bool = False  # write a model below chance on its evaluation set
    seed: int = 0
    # "all": every variant that met parity is written (NAME~QUANTIZATION.*) for the unit to time; "chosen": only the
    # one chosen here
    variants: Literal["all", "chosen"] = "all"


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


def _calibration(settings: ConvertSettings, pre: Preprocessor, size: int, scaling: mf.PixelScaling) -> np.ndarray:
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
    factor, offset = pixel_affine(scaling)
    xs[0, 0, 0, :] = offset
    xs[0, 0, 1, :] = 255 * factor + offset
    return xs


FRAMING_IMAGES = 200  # images the framing record is measured on: its percentiles settle well before


def _training_images(settings: ConvertSettings, size: int, count: int) -> list[np.ndarray]:
    """Up to ``count`` training images, as read from disk: the calibration folder, else synthetic parts of the
    calibration series (what the demo models were trained on)."""
    if settings.calibration:
        return [f for _, _, f in open_folder(settings.calibration).sample(count, settings.seed).frames()]
    return [f for _, f in _synthetic_frames(SYNTHETIC_CALIBRATION_SEED, count, size)]


def _framing(settings: ConvertSettings, frames: Callable[[], Iterable[tuple[int, np.ndarray]]], eval_name: str,
             size: int) -> mf.FramingSpec:
    """How the training images (the calibration folder; else the evaluation images) frame their part, measured
    by the locator the unit crops with (core/framing.py)."""
    if settings.calibration:
        images, where = _training_images(settings, size, FRAMING_IMAGES), str(settings.calibration)
    else:
        images, where = [f for _, f in itertools.islice(frames(), FRAMING_IMAGES)], eval_name
    spec = framing.measure(images, measured_on=where)
    print(f"defect-convert: framing: parts span {spec.span.median:.2f} of the image ({spec.span.p5:.2f}-"
          f"{spec.span.p95:.2f}), background grey {spec.background.median:.0f}, on {spec.images} images of {where}",
          file=sys.stderr)
    return spec


def _spec_from_tensor(details: dict[str, Any], base: mf.InputSpec) -> mf.InputSpec:
    scale, zp = details["quantization"]
    dtype = np.dtype(details["dtype"]).name
    return base.model_copy(update={"dtype": dtype, "scale": float(scale) if dtype != "float32" else 0.0,
                                   "zero_point": int(zp) if dtype != "float32" else 0})


def _manifest(name: str, quantization: str, tflite: Path, source: Path, info: ModelInfo, keras_spec: mf.InputSpec,
              choice: conventions.Choice, heat: explain.Choice | None, parity: dict[str, Any],
              versions: dict[str, str], framed: mf.FramingSpec | None = None) -> mf.Manifest:
    interp, _ = create_interpreter(tflite, num_threads=1)
    inp = interp.get_input_details()[0]
    out, _ = split_outputs(interp.get_output_details(), info.output_kind, tflite)
    out_dtype = np.dtype(out["dtype"]).name
    o_scale, o_zp = out["quantization"]
    quantized_out = out_dtype != "float32"
    return mf.Manifest.model_validate({
        "name": name, "architecture": info.architecture, "quantization": quantization,
        "tflite": mf.file_ref(tflite, tflite.parent), "source": mf.file_ref(source, tflite.parent),
        "input": _spec_from_tensor(inp, keras_spec),
        "output": {"kind": info.output_kind, **_output_class(info, choice.defect_class),
                   "dtype": out_dtype, "scale": float(o_scale) if quantized_out else 0.0,
                   "zero_point": int(o_zp) if quantized_out else 0},
        "gradcam": {"layer": heat.layers[0], "also": heat.layers[1:], "method": heat.method,
                    "chosen_by": heat.chosen_by} if heat else None, "parity": parity,
        "framing": framed, "versions": versions,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })


def _size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _conventions_report(info: ModelInfo, settings: ConvertSettings, choice: conventions.Choice) -> dict[str, Any]:
    """Each convention with its value and how it was decided (given / detected / default / model), for the report."""
    size = f"{info.width}x{info.height}"
    return {
        "input_size": {"value": size, "decided": "given" if info.variable_size else "model"},
        "channels": {"value": "grey" if info.channels == 1 else "RGB", "decided": "model"},
        "pixel_scaling": {"value": choice.pixel_scaling, "decided": choice.decided["pixel_scaling"],
                          "meaning": conventions.MEANING[choice.pixel_scaling]},
        "defect_class": {"value": choice.defect_class, "decided": choice.decided["defect_class"],
                         "output": info.output_kind},
        "color_order": {"value": settings.color_order or "RGB",
                        "decided": "given" if settings.color_order else "default"},
    }


def _detection_report(info: ModelInfo, choice: conventions.Choice) -> dict[str, Any]:
    """Every reading tried on the evaluation set, the scaling layers found inside, and the lines told the user."""
    return {
        "readings": [{"pixel_scaling": r.pixel_scaling, "defect_class": r.defect_class,
                      "balanced_accuracy": r.balanced_accuracy, "auc": r.auc, "log_loss": r.log_loss}
                     for r in choice.readings],
        "scaling_layers": list(info.scaling_layers),
        "scalings_tried": sorted({r.pixel_scaling for r in choice.readings}),
        "notes": list(choice.notes),
    }


def _output_class(info: ModelInfo, defect_class: int) -> dict[str, Any]:
    """The manifest's way of naming the defective class: a softmax's column, or what a sigmoid's p means."""
    if info.output_kind == "softmax2":
        return {"defect_index": defect_class}
    return {"defect_index": 0, "positive": "defective" if defect_class == 1 else "good"}


def _eval_source(settings: ConvertSettings, size: int) -> tuple[Any, str, LabelledFolder | None]:
    if settings.eval_folder:
        folder = open_folder(settings.eval_folder).sample(settings.eval_limit, settings.seed + 1)

        def frames() -> Iterable[tuple[int, np.ndarray]]:
            return ((label, frame) for _, label, frame in folder.frames())

        return frames, str(settings.eval_folder), folder
    synthetic = _synthetic_frames(SYNTHETIC_EVAL_SEED, settings.eval_limit or SYNTHETIC_EVAL_COUNT, size)
    return (lambda: synthetic), f"synthetic parts (seed {SYNTHETIC_EVAL_SEED})", None


def _conventions(model: Any, info: ModelInfo, settings: ConvertSettings, frames: Any, eval_name: str
                 ) -> tuple[conventions.Choice, KerasReference, Preprocessor, mf.InputSpec]:
    """Read the model under every plausible convention, decide, and return the reference under the chosen one."""
    def spec(scaling: mf.PixelScaling) -> mf.InputSpec:
        return mf.InputSpec(height=info.height, width=info.width, channels=info.channels, dtype="float32",
                            pixel_scaling=scaling, color_order=settings.color_order or "RGB")

    column = 1 if info.output_kind == "softmax2" else 0  # p as the model gives it; the other class is 1 - p
    first = settings.pixel_scaling or conventions.SCALINGS[0]
    computed: dict[mf.PixelScaling, tuple[np.ndarray, np.ndarray]] = {}

    def read(scalings: Iterable[mf.PixelScaling]) -> tuple[conventions.Reading, ...]:
        for s in scalings:
            labels, p = computed[s] = keras_p(model, Preprocessor(spec(s)), frames, defect_index=column)
            if len(set(labels.tolist())) < 2:
                raise ValueError(f"{eval_name}: evaluation needs both classes")
            if not np.isfinite(p).all() or p.min() < -1e-6 or p.max() > 1 + 1e-6:
                raise UserError(f"{info.architecture}: outputs range {p.min():.3g}..{p.max():.3g} with {s} "
                                "scaling, not probabilities (a head without its sigmoid or softmax?)")
        return conventions.readings(computed[first][0], {s: p for s, (_, p) in computed.items()},
                                    mf.Decision().threshold)

    found = read([first])
    if not conventions.settled(found, first):  # a given scaling too: the data may contradict it, and that is said
        found = read(s for s in conventions.SCALINGS if s != first)
    labels = computed[first][0]
    choice = conventions.choose(found, scaling=settings.pixel_scaling, defect_class=settings.defect_class,
                                evidence=f"{len(labels)} images of {eval_name}",
                                chance_auc=conventions.chance_floor(labels))
    if info.implied_scaling and info.implied_scaling != choice.pixel_scaling:
        choice = dataclasses.replace(choice, notes=(*choice.notes, (
            f"note: the model's own {info.scaling_layers[0]}, yet it reads as trained on "
            f"{conventions.MEANING[choice.pixel_scaling]} ({choice.decided['pixel_scaling']}): its input is scaled "
            "twice, which is right only if it was trained that way (as the reference EfficientNetB0 was)")))
    for line in choice.notes:
        print(f"defect-convert: {line}", file=sys.stderr)
    if choice.below_chance and not settings.force:
        raise UserError(f"the model is below chance on its own evaluation set ({choice.chosen.describe()}, chance "
                        f"AUC at least {choice.chance_auc:.2f}, on {len(labels)} images of {eval_name}) with "
                        f"--pixel-scaling {choice.pixel_scaling} --defect-class {choice.defect_class}: the "
                        "conventions or the evaluation folder are "
                        "wrong; --force writes it anyway")
    keras_spec = spec(choice.pixel_scaling)
    pre = Preprocessor(keras_spec)
    _, p = computed[choice.pixel_scaling]
    p_defect = p if choice.defect_class == 1 else 1.0 - p
    ref = keras_reference(model, pre, frames, defect_index=0, computed=(labels, p_defect))
    return choice, ref, pre, keras_spec


def fastest(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the candidates that met parity, the one :func:`core.timing.quickest` runs (median ``classify`` at one
    thread, measured in turns; then agreement, then size). The name of a scheme says little: dynamic-range is slower
    than float32 on some CPUs. Each row that met parity gets the reason it was, or was not, chosen."""
    passed = [r for r in rows if r["verdict"] == "passed"]
    if not passed:
        return None
    best = passed[quickest([r["latency_ms_tflite"] for r in passed], [r["agreement"] for r in passed],
                           [r["size_bytes"] for r in passed])]
    limit = min(r["latency_ms_tflite"] for r in passed) * WITHIN
    for r in passed:
        if r is best:
            r["reason"] = (f"chosen: the fastest of the {len(passed)} meeting parity "
                           f"({r['latency_ms_tflite']:.2f} ms at 1 thread, {r['size_bytes'] / 1e6:.2f} MB)")
        elif r["latency_ms_tflite"] > limit:
            r["reason"] = (f"met parity, slower: {r['latency_ms_tflite']:.2f} ms against "
                           f"{best['latency_ms_tflite']:.2f} ms")
        elif r["agreement"] < best["agreement"]:
            r["reason"] = f"met parity, as fast, agrees less: {r['agreement']:.4f} against {best['agreement']:.4f}"
        else:
            r["reason"] = f"met parity, as fast, larger: {r['size_bytes'] / 1e6:.2f} MB"
    return best


def _heatmaps(model: Any, info: ModelInfo, settings: ConvertSettings, choice: conventions.Choice, p: np.ndarray,
              frames: Callable[[], Iterable[tuple[int, np.ndarray]]], pre: Preprocessor) -> explain.Choice | None:
    """The heatmaps' layers and method, measured on the evaluation images the Keras model calls defective (spread
    over p); None for a SavedModel, whose layers Keras cannot reach."""
    if info.gradcam_layer is None:
        return None
    called = np.flatnonzero(p > mf.Decision().threshold)
    picks = set(called[np.linspace(0, len(called) - 1, min(len(called), explain.MAX_IMAGES)).round().astype(int)]
                .tolist()) if len(called) else set()
    xs = np.stack([pre(f) for i, (_, f) in enumerate(frames()) if i in picks]) if picks else np.zeros((0,))
    given = (settings.gradcam_layer,) if settings.gradcam_layer else ()
    arch = ARCHITECTURES.get(info.architecture)
    # Measured on three architectures, Grad-CAM++ never did worse than Grad-CAM (docs/gradcam.md).
    fallback = (arch.heatmap_layers, arch.heatmap_method) if arch else ((info.gradcam_layer,), "gradcam++")
    heat = explain.choose(model, xs, defect_index=choice.defect_class if info.output_kind == "softmax2" else 0,
                          p_is_good=info.output_kind == "sigmoid" and choice.defect_class == 0,
                          original=info.gradcam_layer, fallback=fallback, layers=given,
                          method=settings.gradcam_method, seed=settings.seed)
    print(f"defect-convert: heatmaps: {heat.method} on {'+'.join(heat.layers)}, {heat.chosen_by}", file=sys.stderr)
    return heat


def _mixed(model: Any, calib: np.ndarray, probe: Callable[[], np.ndarray],
           attempt: Callable[..., dict[str, Any]], float32: Path | None) -> None:
    """Mixed precision: int8 with a float output; failing that, with more and more of the layers whose quantization
    errs most on ``probe()`` (the evaluation images int8 got most wrong) kept in float, each with the ops that read
    it, until one meets parity. ``float32``: the float32 candidate already converted (its graph says who reads
    what), if ``auto`` made one."""
    if attempt("mixed", "mixed-0")["verdict"] == "passed":
        return
    try:
        errors = layer_errors(model, calib, probe())
        graph = consumers(float32.read_bytes() if float32 else to_tflite(model, "float32"))
    except ConversionError as e:
        print(f"defect-convert: {e}; no mixed variant with float layers tried", file=sys.stderr)
        return
    tried = {0}
    for share in MIXED_SHARES:
        k = math.ceil(share * len(errors))
        layers = float_closure(graph, [n for n, _ in errors[:k]])
        if len(layers) in tried:
            continue
        tried.add(len(layers))
        row = attempt("mixed", f"mixed-{len(layers)}", layers)
        row["reason"] = (f"the {k} of {len(errors)} layers with the most quantization noise ({errors[k - 1][1]:.2f} "
                         f"of their signal and above) in float, with the {len(layers) - k} that read them"
                         + (f"; {row['reason']}" if row.get("reason") else ""))
        if row["verdict"] == "passed":
            return


def _variants(others: list[dict[str, Any]], name: str, out_dir: Path, verify_doc: dict[str, Any] | None,
              write: Callable[[dict[str, Any], Path, Path, Path | None], None]) -> list[mf.Variant]:
    """Every other candidate that met parity, written beside the chosen one as ``NAME~QUANTIZATION.*``, fastest
    first, with its own verification set (the same images, its own p): a unit times them on its own hardware
    (edge/variants.py), where int8 may be the fast one that was not here."""
    out = []
    for row in sorted(others, key=lambda r: r["latency_ms_tflite"]):
        stem = f"{name}~{row['quantization']}"
        checked = verification.write_variant(verify_doc, out_dir, stem, row["_files"][1], row["quantization"]) \
            if verify_doc else None
        write(row, out_dir / f"{stem}.tflite", out_dir / f"{stem}.json", checked)
        out.append(mf.Variant(quantization=row["quantization"], manifest=mf.file_ref(out_dir / f"{stem}.json",
                                                                                     out_dir)))
        row["variant"] = f"{stem}.json"
    return out


def convert_model(path: Path, out_dir: Path, settings: ConvertSettings) -> ConvertResult:
    loaded = load_model(path)
    info = inspect(loaded, path, gradcam_layer=settings.gradcam_layer, input_size=settings.input_size)
    model = fixed_size(loaded, info)
    exported, no_features = with_features(model)  # converted with its pooled features as a second output
    source = path / "saved_model.pb" if info.file_format == "savedmodel" else path
    size = max(info.height, info.width)
    frames, eval_name, folder = _eval_source(settings, size)
    choice, ref, keras_pre, keras_spec = _conventions(model, info, settings, frames, eval_name)
    heat = _heatmaps(loaded, info, settings, choice, ref.p, frames, keras_pre)  # the file's layers, as the worker
    framed = _framing(settings, frames, eval_name, size)
    candidates = list(QUANTIZATIONS) if settings.quantize == "auto" else [settings.quantize]
    calib = _calibration(settings, keras_pre, size, choice.pixel_scaling) \
        if {"int8", "mixed"} & set(candidates) else None
    versions = _versions()
    name = settings.name
    final_tflite, final_manifest = out_dir / f"{name}.tflite", out_dir / f"{name}.json"
    rows: list[dict[str, Any]] = []
    chosen: tuple[str, Path, dict[str, Any], Path] | None = None
    tmp_files: list[Path] = []
    def attempt(q: str, tag: str, float_layers: Sequence[str] = (), wider: np.ndarray | None = None
                ) -> dict[str, Any]:
        """Convert at ``q`` (calibrated on ``wider`` when given), check parity on the evaluation set, and add the
        row to ``rows``."""
        row: dict[str, Any] = {"quantization": q, **({"float_layers": len(float_layers)} if q == "mixed" else {}),
                               **({"calibration_images": len(wider)} if wider is not None else {})}
        rows.append(row)
        try:
            data = to_tflite(exported or model, q, representative=calib if wider is None else wider,
                             int8_io=settings.int8_io, float_layers=float_layers)
        except ConversionError as e:
            row.update(verdict="failed", reason=str(e))
            return row
        tmp = out_dir / f".{name}.{tag}.tmp.tflite"
        tmp_man = out_dir / f".{name}.{tag}.tmp.json"
        tmp_files.extend((tmp, tmp_man))
        mf.write_atomic(tmp, data)
        row["_tflite"] = tmp
        mf.write_atomic(tmp_man, _manifest(name, q, tmp, source, info, keras_spec, choice, heat, {}, versions)
                        .to_json().encode())
        figures = compare(ref, Classifier(tmp_man, num_threads=1), frames)
        p_tfl = figures.pop("p_tflite")
        row.update(figures, size_bytes=len(data))
        if figures["agreement"] >= settings.min_agreement:
            row.update(verdict="passed", _p=p_tfl, _files=(tmp, tmp_man))
        else:
            row.update(verdict="rejected", reason=f"agreement {figures['agreement']:.4f} < "
                                                  f"{settings.min_agreement} ({figures['disagreements']} "
                                                  f"decisions differ)", _p=p_tfl)
        return row

    try:
        for q in candidates:
            if q != "mixed":
                attempt(q, q)
        int8 = next((r for r in rows if r["quantization"] == "int8" and "_p" in r), None)
        if settings.quantize == "auto" and int8 and int8["verdict"] != "passed" and calib is not None:
            # A calibration sample that misses part of the data's range clips activations there: measured on the
            # committed EfficientNetB0, 200 images gave 3 flipped decisions in 300 and 600 gave none, while keeping
            # its worst 16 layers (ranked then in units of their own step) or all its squeeze-excite blocks in float
            # changed nothing.
            wide = dataclasses.replace(settings, calibration_count=settings.calibration_count * WIDER_CALIBRATION)
            wider = _calibration(wide, keras_pre, size, choice.pixel_scaling)
            if len(wider) > len(calib):  # a user's folder may have no more images
                attempt("int8", "int8-wider", wider=wider)
        int8_ok = any(r["quantization"] == "int8" and r["verdict"] == "passed" for r in rows)
        if "mixed" in candidates or (settings.quantize == "auto" and int8 and not int8_ok):
            assert calib is not None
            # Where int8 errs most (all images alike when it was not tried); each input as Keras takes it.
            def probe() -> np.ndarray:
                worst = set(np.argsort(-np.abs(int8["_p"] - ref.p))[:DEBUG_SAMPLES].tolist() if int8 else
                            np.linspace(0, len(ref.p) - 1, DEBUG_SAMPLES).round().astype(int).tolist())
                return np.stack([keras_pre(f) for i, (_, f) in enumerate(frames()) if i in worst])

            float32 = next((r["_tflite"] for r in rows if r["quantization"] == "float32" and "_tflite" in r), None)
            _mixed(model, calib, probe, attempt, float32)
        passed = [r for r in rows if r["verdict"] == "passed"]
        if len(passed) > 1:  # the latencies compared are measured in turns, not one candidate after another
            frame = next(iter(frames()))[1]
            for r, ms in zip(passed, interleaved_latency([Classifier(r["_files"][1], num_threads=1) for r in passed],
                                                         frame), strict=True):
                r["latency_ms_tflite"] = ms
        best = fastest(rows)
        if best is not None:
            best["verdict"] = "accepted"
            best_tflite, best_manifest = best["_files"]
            chosen = (best["quantization"], best_tflite, best, best_manifest)
        shown = chosen[2] if chosen else next((r for r in reversed(rows) if "_p" in r), None)
        threshold = mf.Decision().threshold
        verify_json, verify_doc = verification.write(
            name, out_dir, frames(), verification.select(ref.p, threshold), model, keras_pre, chosen[3], chosen[0],
            threshold) if chosen else (None, {})
        refused = verification.confident_problem(verify_doc, mf.Decision()) if verify_json else None
        if refused:
            print(f"defect-convert: warning: units will refuse {name}: {refused}", file=sys.stderr)
        signed, signature_report = (fit_signature(Classifier(chosen[3], num_threads=1),
                                                  _training_images(settings, size, FIT_IMAGES),
                                                  [f for _, f in frames()], out_dir, name)
                                    if chosen and exported is not None
                                    else (None, {"skipped": no_features or "no model met parity"}))
        conventions_report = _conventions_report(info, settings, choice)
        for stale in out_dir.glob(f"{name}~*"):  # a variant of an earlier conversion of this name
            stale.unlink()
        if chosen:
            def write(row: dict[str, Any], tflite: Path, manifest: Path, verify: Path | None,
                      variants: Sequence[mf.Variant] = ()) -> None:
                row["_tflite"].replace(tflite)
                parity = {k: row[k] for k in ("agreement", "accuracy_keras", "accuracy_tflite", "mean_abs_dp",
                                              "max_abs_dp", "auc_keras", "auc_tflite", "latency_ms_tflite",
                                              "latency_ms_keras", "size_bytes")}
                parity.update(eval=eval_name, n=len(ref.p), min_agreement=settings.min_agreement)
                parity["conventions"] = {k: v["decided"] for k, v in conventions_report.items()}
                m = _manifest(name, row["quantization"], tflite, source, info, keras_spec, choice, heat, parity,
                              versions, framed)
                m = m.model_copy(update={"verification": mf.file_ref(verify, out_dir) if verify else None,
                                         "signature": signed, "variants": tuple(variants)})
                mf.write_atomic(manifest, m.to_json().encode())

            others = [r for r in rows if r["verdict"] == "passed" and r is not chosen[2]]
            variants = _variants(others, name, out_dir, verify_doc if verify_json else None, write) \
                if settings.variants == "all" else []
            write(chosen[2], final_tflite, final_manifest, verify_json, variants)
        result: dict[str, Any] = {
            "name": name, "source": str(path), "source_size_bytes": _size_bytes(path),
            "architecture": info.architecture, "keras_file_version": info.keras_version,
            "file_format": info.file_format, "conventions": conventions_report,
            "detection": _detection_report(info, choice),
            "heatmaps": {"layers": list(heat.layers), "method": heat.method, "chosen_by": heat.chosen_by,
                         "deletion_drop": heat.deletion_drop, "random_drop": heat.random_drop,
                         "original_layer": info.gradcam_layer, "candidates": heat.table}
            if heat else None,
            "eval": {"folder": eval_name, "n": len(ref.p),
                     "unreadable_skipped": len(folder.skipped) if folder else 0,
                     "good": int((ref.labels == 0).sum()), "defect": int((ref.labels == 1).sum())},
            "threshold": threshold, "min_agreement": settings.min_agreement,
            "framing": framed.model_dump(mode="json"), "signature": signature_report,
            "verification": verify_doc["tolerance"] | {"file": verify_json.name, "images": len(verify_doc["images"])}
            if verify_json else None,
            "chosen": chosen[0] if chosen else None,
            "candidates": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
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
    finally:
        for t in tmp_files:
            t.unlink(missing_ok=True)
    print(f"parity evaluated on {len(ref.p)} images of {eval_name}", file=sys.stderr)
    return ConvertResult(chosen=chosen[0] if chosen else None, tflite_path=final_tflite,
                         manifest_path=final_manifest, report_path=report_json, report=result,
                         skipped=folder.skipped if folder else [])
