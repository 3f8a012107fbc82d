"""Loading the ``.h5`` files users have, whichever Keras wrote them, and checking they are models we support.

Keras 3 refuses Keras 2 / tf.keras files of MobileNetV2 and EfficientNetB0 with "Unrecognized keyword arguments
passed to DepthwiseConv2D: {'groups': 1}": Keras 2 stored ``groups`` in every DepthwiseConv2D config, a keyword
Keras 3's layer does not take (it is always 1 for a depthwise convolution). A subclass that drops it loads those files
exactly, weights included. The Grad-CAM worker loads ``.h5`` files through this module too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.architectures import ARCHITECTURES
from converter.errors import ModelError
from converter.tfimport import tf_keras

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

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


def _compat_objects(keras: Any) -> dict[str, Any]:
    class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
        """Keras 2 wrote ``groups=1`` into DepthwiseConv2D configs; Keras 3 rejects the keyword."""

        def __init__(self, *args: Any, groups: int = 1, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    return {"DepthwiseConv2D": DepthwiseConv2D}


def _file_attrs(path: Path) -> dict[str, str]:
    """Read the HDF5 root attributes Keras writes (``model_config``, ``keras_version``, ``backend``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
    except OSError as e:
        raise ModelError(f"{path}: HDF5 file is damaged or truncated ({e})") from None


def load_model(path: Path) -> Any:
    """Load a Keras 2 or Keras 3 ``.h5`` for inference (not compiled). One-line :class:`ModelError` otherwise."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
    if head != _HDF5_MAGIC:
        raise ModelError(f"{path}: not an HDF5 file; expected a Keras model saved as .h5")
    attrs = _file_attrs(path)
    if "model_config" not in attrs:
        raise ModelError(f"{path}: HDF5 file holds no Keras model (weights only? save with model.save('x.h5'))")
    _, keras = tf_keras()
    try:
        model = keras.models.load_model(path, compile=False, custom_objects=_compat_objects(keras))
    except Exception as e:  # Keras raises many types for a model it cannot rebuild; all mean the same to a user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: Keras cannot rebuild this model: {first[:300]}") from None
    if len(model.inputs) == 1 and len(model.outputs) == 1:
        # Keras 2 files declare their input as a one-element list; Keras 3 then warns on every call with a plain
        # tensor. The same layers rewired with a single-tensor input are the same function, without the noise.
        model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    return model


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
    attrs = _file_attrs(path)
    config = json.loads(attrs["model_config"])
    arch = _architecture(model, config)
    layer = gradcam_layer or (ARCHITECTURES[arch].gradcam_layer if arch in ARCHITECTURES else _last_conv_layer(model))
    try:
        model.get_layer(layer)
    except ValueError:
        raise ModelError(f"{path}: Grad-CAM layer {layer!r} not found in the model") from None
    return ModelInfo(architecture=arch, height=int(shape[1]), width=int(shape[2]), output_kind=kind,
                     gradcam_layer=layer, keras_version=attrs.get("keras_version", "unknown"))
