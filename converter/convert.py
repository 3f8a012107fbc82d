"""Keras model → ``.tflite`` bytes at one of the four quantizations the product ships.

- ``float32``: the reference; no loss.
- ``float16``: weights stored as float16 (half the size), computed in float32 on a CPU.
- ``dynamic``: int8 weights, activations quantized on the fly. Measured *slower* than float32 for MobileNetV2 on x86
  (docs/benchmarks.md), so ``--quantize auto`` converts every variant, keeps those that meet parity, and chooses the
  fastest of them by measured latency (then the smallest).
- ``int8``: full-integer, calibrated on representative images of both classes; uint8 (default) or int8 input and
  output, so the edge can feed raw pixels (docs/unit.md). A calibration set that misses part of the output range clips
  p_defect to it: the parity check is what catches that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from edge.tfload import quiet, tf_keras

QUANTIZATIONS: tuple[str, ...] = ("int8", "dynamic", "float16", "float32")  # what --quantize auto tries


class ConversionError(RuntimeError):
    """TensorFlow's converter could not produce this quantization."""


def to_tflite(model: Any, quantization: str, *, representative: np.ndarray | None = None,
              int8_io: Literal["uint8", "int8"] = "uint8") -> bytes:
    """Convert ``model``; ``representative`` (N x H x W x 3 float32, preprocessed as for Keras) is needed for int8."""
    tf, _ = tf_keras()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if representative is None or len(representative) == 0:
            raise ConversionError("int8 needs representative images")
        data = representative

        def samples() -> Iterator[list[np.ndarray]]:
            for x in data:
                yield [x[None].astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = samples
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
