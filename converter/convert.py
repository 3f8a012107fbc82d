"""Keras model → ``.tflite`` bytes at one of the four quantizations the product ships.

- ``float32``: the reference; no loss.
- ``float16``: weights stored as float16 (half the size), computed in float32 on a CPU.
- ``dynamic``: int8 weights, activations quantized on the fly. Measured *slower* than float32 for MobileNetV2 on x86
  (docs/benchmarks.md), so ``--quantize auto`` converts every variant, keeps those that meet parity, and chooses the
  fastest of them by measured latency (then the smallest).
- ``int8``: full-integer, calibrated on representative images of both classes; uint8 (default) or int8 input and
  output, so the edge can feed raw pixels (docs/unit.md). A calibration set that misses part of the output range clips
  p_defect to it: the parity check is what catches that.
- ``mixed``: int8 inside with float32 input and output (the output is never clipped to a calibration range), and the
  layers whose quantization errs most kept in float. TensorFlow's quantization debugger measures each layer's error
  against the float model on the calibration images, here as noise relative to each channel's own signal (a tensor
  quantizes all its channels with one scale, so one channel with a wide range leaves the others a few levels; in
  units of the tensor's own step that error looks ordinary). A tensor kept in float takes the ops that read it along
  (:func:`float_closure`): they would quantize the same values again. ``auto`` tries it when full int8 misses
  parity, with more and more of the worst layers in float (``MIXED_SHARES``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from core.runtime import find_runtime
from edge.tfload import quiet, tf_keras

QUANTIZATIONS: tuple[str, ...] = ("int8", "dynamic", "float16", "float32")  # what --quantize auto tries first
# ``mixed`` after int8 misses parity: no layer in float (only the float output), then these shares of the layers,
# worst first, until one meets parity.
MIXED_SHARES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
DEBUG_SAMPLES = 16  # evaluation images the quantization debugger runs (slow: it compares every layer)
# Ops whose int8 output keeps their input's scale: a value kept in float stays unquantized through them only if they
# are in float too, and so are the ops after them.
PASS_THROUGH: frozenset[str] = frozenset({
    "MAX_POOL_2D", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "PAD", "SLICE", "STRIDED_SLICE", "GATHER",
    "SPLIT", "SPLIT_V", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH"})


class ConversionError(RuntimeError):
    """TensorFlow's converter could not produce this quantization."""


def _samples(data: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def samples() -> Iterator[list[np.ndarray]]:
        for x in data:
            yield [x[None].astype(np.float32)]
    return samples


def _mixed_converter(model: Any, representative: np.ndarray) -> Any:
    tf, _ = tf_keras()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _samples(representative)
    return conv


def channel_noise(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    """The median over channels (the last axis) of the quantization error's RMS over the float signal's RMS; channels
    that are always zero are left out."""
    f = np.asarray(float_values, np.float64)
    f = f.reshape(-1, f.shape[-1]) if f.ndim else f.reshape(1, 1)
    error = (np.asarray(quantized, np.int32).reshape(f.shape) - zero_point) * scale - f
    signal, noise = np.sqrt((f ** 2).mean(axis=0)), np.sqrt((error ** 2).mean(axis=0))
    live = signal > 0
    return float(np.median(noise[live] / signal[live])) if live.any() else 0.0


def layer_errors(model: Any, representative: np.ndarray, probe: np.ndarray) -> list[tuple[str, float]]:
    """Each quantized tensor's error against the float model on the ``probe`` inputs (best: those int8 got most
    wrong), as :func:`channel_noise`, worst first: the quantization debugger's per-layer comparison, with the model
    calibrated on ``representative`` as for int8. Tensors the debugger names are the converter's, so they can be
    kept in float by name."""
    tf, _ = tf_keras()
    try:
        with quiet():
            options = tf.lite.experimental.QuantizationDebugOptions(
                layer_direct_compare_metrics={"channel_noise": channel_noise})
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=_mixed_converter(model, representative), debug_dataset=_samples(probe),
                debug_options=options)
            debugger.run()
            dump = io.StringIO()
            debugger.layer_statistics_dump(dump)
    except Exception as e:
        raise ConversionError(f"the quantization debugger failed: {str(e).strip()[:300]}") from None
    out = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        noise = float(row.get("channel_noise") or "nan")
        if np.isfinite(noise) and noise > 0:
            out.append((row["tensor_name"], noise))
    return sorted(out, key=lambda e: -e[1])


def consumers(float_tflite: bytes) -> dict[str, list[tuple[str, list[str]]]]:
    """Each tensor of the model's float32 conversion: the ops that read it, as (op, the tensors it writes). Its
    tensors carry the names the quantization debugger reports and ``float_layers`` takes."""
    interpreter = find_runtime().module.Interpreter(model_content=float_tflite)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    graph: dict[str, list[tuple[str, list[str]]]] = {}
    for op in interpreter._get_ops_details():  # the only listing of the graph the interpreter offers
        outputs = [names[i] for i in op["outputs"] if i in names]
        for i in op["inputs"]:
            if i in names:
                graph.setdefault(names[i], []).append((op["op_name"], outputs))
    return graph


def float_closure(graph: dict[str, list[tuple[str, list[str]]]], tensors: Sequence[str]) -> list[str]:
    """``tensors`` and what must stay in float with them: every op reading one of them (else it quantizes the same
    values again, with the same range), and through ops that keep their input's scale (pooling, reshapes), the ops
    after those. In order: ``tensors`` first."""
    out = list(dict.fromkeys(tensors))
    seen, todo = set(out), list(out)
    while todo:
        for op, outputs in graph.get(todo.pop(), ()):
            for t in outputs:
                if t not in seen:
                    seen.add(t)
                    out.append(t)
                    if op in PASS_THROUGH:
                        todo.append(t)
    return out


def to_tflite(model: Any, quantization: str, *, representative: np.ndarray | None = None,
              int8_io: Literal["uint8", "int8"] = "uint8", float_layers: Sequence[str] = ()) -> bytes:
    """Convert ``model``; ``representative`` (N x H x W x 3 float32, preprocessed as for Keras) is needed for int8 and
    mixed; ``float_layers``: for mixed, the tensors kept in float (names from :func:`layer_errors`)."""
    tf, _ = tf_keras()
    if quantization == "mixed":
        if representative is None or len(representative) == 0:
            raise ConversionError("mixed needs representative images")
        try:
            with quiet():
                options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_layers))
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=_mixed_converter(model, representative), debug_dataset=_samples(representative[:1]),
                    debug_options=options)
                return bytes(debugger.get_nondebug_quantized_model())
        except Exception as e:
            raise ConversionError(f"mixed conversion failed: {str(e).strip()[:300]}") from None
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ConversionError("int8 needs representative images")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _samples(representative)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.uint8 if int8_io == "uint8" else tf.int8
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
    elif quantization != "float32":
        raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}")
    try:
        with quiet():
            return bytes(conv.convert())
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{quantization} conversion failed: {first[:300]}") from None
