"""Checking a loaded Keras model is one the product supports, and describing it for the manifest.

Loading itself (Keras 2 and 3 ``.h5`` files) is :func:`edge.tfload.load_model`, shared with the Grad-CAM worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.architectures import ARCHITECTURES
from edge.tfload import ModelError, file_attrs, load_model

__all__ = ["SUPPORTED", "ModelInfo", "inspect", "load_model"]

SUPPORTED = ("one image input of shape (H, W, 3) and one output: a sigmoid (1 unit, p = P(defective)) "
             "or a 2-class softmax")


@dataclass(frozen=True)
class ModelInfo:
    """What the converter learned about a loaded model; it becomes the manifest's architecture part."""

    architecture: str
    height: int
    width: int
    output_kind: str  # "sigmoid" | "softmax2"
    gradcam_layer: str
    keras_version: str  # the Keras that wrote the file, from its attributes


def _architecture(model: Any, config: dict[str, Any]) -> str:
    names = {layer.name for layer in model.layers}
    for key, arch in ARCHITECTURES.items():
        if arch.gradcam_layer in names and (key != "cnn" or "flatten" in names):
            return key
    return str(config.get("config", {}).get("name") or model.name or "custom")


def _last_conv_layer(model: Any) -> str:
    """The last convolution: its feature maps keep the most spatial detail of the most abstract features."""
    maps = [layer for layer in model.layers if len(getattr(getattr(layer, "output", None), "shape", ())) == 4]
    convs = [layer for layer in maps if "Conv" in type(layer).__name__]
    if not (convs or maps):
        raise ModelError("model has no 4-D feature map layer to use for Grad-CAM; pass --gradcam-layer")
    return str((convs or maps)[-1].name)


def _activation_name(layer: Any) -> str:
    act = getattr(layer, "activation", None)
    return str(getattr(act, "__name__", act or ""))


def inspect(model: Any, path: Path, *, gradcam_layer: str | None = None) -> ModelInfo:
    """Check the model is one we support and describe it; say what is supported when it is not."""
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1:
        raise ModelError(f"{path}: model has {len(inputs)} inputs; supported: {SUPPORTED}")
    if len(outputs) != 1:
        raise ModelError(f"{path}: model has {len(outputs)} outputs; supported: {SUPPORTED}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or not shape[1] or not shape[2]:
        raise ModelError(f"{path}: input shape {shape} is not one fixed-size RGB image; supported: {SUPPORTED}")
    out_shape = tuple(outputs[0].shape)
    units = out_shape[-1] if len(out_shape) == 2 else None
    act = _activation_name(model.layers[-1])
    if units == 1 and act == "sigmoid":
        kind = "sigmoid"
    elif units == 2 and act == "softmax":
        kind = "softmax2"
    else:
        raise ModelError(f"{path}: output shape {out_shape} with activation {act or 'unknown'!r} is not "
                         f"supported; supported: {SUPPORTED}")
    attrs = file_attrs(path)
    config = json.loads(attrs["model_config"])
    arch = _architecture(model, config)
    layer = gradcam_layer or (ARCHITECTURES[arch].gradcam_layer if arch in ARCHITECTURES else _last_conv_layer(model))
    try:
        model.get_layer(layer)
    except ValueError:
        raise ModelError(f"{path}: Grad-CAM layer {layer!r} not found in the model") from None
    return ModelInfo(architecture=arch, height=int(shape[1]), width=int(shape[2]), output_kind=kind,
                     gradcam_layer=layer, keras_version=attrs.get("keras_version", "unknown"))
