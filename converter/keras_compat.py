"""Checking a loaded Keras model is one the product supports, and describing it for the manifest.

Loading itself (``.h5`` of Keras 2 and 3, ``.keras``, SavedModel folders) is :func:`edge.tfload.load_model`, shared
with the Grad-CAM worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from converter.architectures import ARCHITECTURES
from core.manifest import PixelScaling
from edge.tfload import ModelError, describe_file, load_model

__all__ = ["SUPPORTED", "ModelInfo", "fixed_size", "inspect", "load_model"]

SUPPORTED = ("one image input (H, W, 3) or grey (H, W, 1) and one output: a sigmoid (1 unit) or a 2-class softmax")


@dataclass(frozen=True)
class ModelInfo:
    """What the converter learned about a loaded model; it becomes the manifest's architecture part."""

    architecture: str
    height: int
    width: int
    channels: Literal[1, 3]  # 1 (grey) or 3
    variable_size: bool  # the model takes any size; height and width came from --input-size
    output_kind: str  # "sigmoid" | "softmax2"
    gradcam_layer: str | None  # None: no Keras layers to look into (a SavedModel)
    keras_version: str  # the Keras that wrote the file, from its attributes
    file_format: str  # "h5" | "keras" | "savedmodel"
    scaling_layers: tuple[str, ...]  # Rescaling / Normalization layers inside, described, in order
    implied_scaling: PixelScaling | None  # what the first of them implies the input is


def _architecture(model: Any) -> str:
    names = {layer.name for layer in model.layers}
    for key, arch in ARCHITECTURES.items():
        if arch.gradcam_layer in names and (key != "cnn" or "flatten" in names):
            return key
    return str(model.name or "custom")


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


def _scaling_layers(model: Any) -> tuple[tuple[str, ...], PixelScaling | None]:
    """Describe the layers that rescale pixels inside the model, and the input the first one implies, if any."""
    found: list[str] = []
    implied: PixelScaling | None = None
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Rescaling":
            scale, offset = float(layer.scale), float(layer.offset)
            text = f"{layer.name}: Rescaling(scale={scale:.6g}, offset={offset:.6g})"
            if not found and ((abs(scale * 255 - 1) < 1e-3 and abs(offset) < 1e-6)
                              or (abs(scale * 127.5 - 1) < 1e-3 and abs(offset + 1) < 1e-6)):
                implied = "raw"
                text += ", which implies raw 0-255 input"
            found.append(text)
        elif kind == "Normalization":
            found.append(f"{layer.name}: Normalization (mean and variance learned from its training data)")
    return tuple(found), implied


def _size(shape: tuple[Any, ...], path: Path, input_size: tuple[int, int] | None) -> tuple[int, int, bool]:
    """(height, width, variable) of the model's input, taking --input-size (W x H) where the model leaves it open."""
    fixed = bool(shape[1]) and bool(shape[2])
    if input_size is None:
        if not fixed:
            raise ModelError(f"{path}: input size is variable {shape[1:]}; pass --input-size WxH, the size the "
                             "model was trained at")
        return int(shape[1]), int(shape[2]), False
    width, height = input_size
    if fixed and (int(shape[1]), int(shape[2])) != (height, width):
        raise ModelError(f"{path}: the model takes {shape[2]}x{shape[1]} images; --input-size {width}x{height} "
                         "does not fit (leave it out for a fixed-size model)")
    return height, width, not fixed


def inspect(model: Any, path: Path, *, gradcam_layer: str | None = None,
            input_size: tuple[int, int] | None = None) -> ModelInfo:
    """Check the model is one we support and describe it; say what is supported when it is not."""
    file_format, keras_version = describe_file(path)
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1:
        raise ModelError(f"{path}: model has {len(inputs)} inputs; supported: {SUPPORTED}")
    if len(outputs) != 1:
        raise ModelError(f"{path}: model has {len(outputs)} outputs; supported: {SUPPORTED}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise ModelError(f"{path}: input shape {shape} is not one RGB or grey image; supported: {SUPPORTED}")
    height, width, variable = _size(shape, path, input_size)
    out_shape = tuple(outputs[0].shape)
    units = out_shape[-1] if len(out_shape) == 2 else None
    # A SavedModel's signature hides its activation: its outputs are checked for being probabilities by the parity
    # pass (p outside [0, 1] fails there).
    act = "" if file_format == "savedmodel" else _activation_name(model.layers[-1])
    if units == 1 and act in ("sigmoid", ""):
        kind = "sigmoid"
    elif units == 2 and act in ("softmax", ""):
        kind = "softmax2"
    else:
        raise ModelError(f"{path}: output shape {out_shape} with activation {act or 'unknown'!r} is not "
                         f"supported; supported: {SUPPORTED}")
    arch = _architecture(model)
    layers, implied = _scaling_layers(model)
    layer: str | None
    if file_format == "savedmodel":
        if gradcam_layer:
            raise ModelError(f"{path}: a SavedModel has no Keras layers for --gradcam-layer; convert the .keras or "
                             ".h5 file to have heatmaps")
        layer = None
    else:
        layer = gradcam_layer or (ARCHITECTURES[arch].gradcam_layer if arch in ARCHITECTURES
                                  else _last_conv_layer(model))
        try:
            model.get_layer(layer)
        except ValueError:
            raise ModelError(f"{path}: Grad-CAM layer {layer!r} not found in the model") from None
    return ModelInfo(architecture=arch, height=height, width=width, channels=1 if shape[3] == 1 else 3,
                     variable_size=variable, output_kind=kind, gradcam_layer=layer, keras_version=keras_version,
                     file_format=file_format, scaling_layers=layers, implied_scaling=implied)


def fixed_size(model: Any, info: ModelInfo) -> Any:
    """The model with its input fixed to ``info``'s size: TFLite needs one, and a variable-size model has none.

    The model is called on a new input, nested; the original (which Grad-CAM loads from the file) keeps its layers.
    """
    if not info.variable_size:
        return model
    from edge.tfload import tf_keras

    _, keras = tf_keras()
    inp = keras.Input((info.height, info.width, info.channels), name="image")
    return keras.Model(inp, model(inp), name=model.name)
