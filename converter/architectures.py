"""The three reference architectures the product grew from, built with named layers.

Keras' default layer names depend on what was built earlier in the process (``conv2d_3`` can become ``conv2d_7``), so
every layer the product refers to is named here explicitly. All take RGB scaled by 1/255 (the original app's
convention, kept so users' own ``.h5`` files and ours are interchangeable) and end in one sigmoid, p = P(defective).
EfficientNetB0 contains its own ``Rescaling(1/255)`` and ``Normalization``, so its input is scaled twice; that is what
users' files do too, and the manifest records the scaling the model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.payloads import CamMethod
from edge.tfload import tf_keras


@dataclass(frozen=True)
class Architecture:
    key: str
    size: int  # square input side
    gradcam_layer: str  # the original app's Grad-CAM layer: it also identifies the architecture in a user's file
    title: str
    # Heatmaps where the converter has nothing to measure on (no evaluation image called defective): the layers and
    # method with the best pointing game on the demo models (bench/gradcam.py, docs/gradcam.md).
    heatmap_layers: tuple[str, ...]
    heatmap_method: CamMethod


ARCHITECTURES: dict[str, Architecture] = {
    a.key: a for a in (
        Architecture("mobilenetv2", 224, "Conv_1", "MobileNetV2 224x224", ("block_13_expand_relu",), "gradcam++"),
        Architecture("cnn", 256, "conv2d_3", "custom CNN 256x256", ("max_pooling2d_3",), "hirescam"),
        Architecture("efficientnetb0", 256, "top_activation", "EfficientNetB0 256x256",
                     ("block4a_expand_activation",), "gradcam++"),
    )
}


def _head(keras: Any, features: Any, dropout: float) -> Any:
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(features)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="prediction")(x)


def _custom_cnn(keras: Any, inp: Any) -> Any:
    x = inp
    for i, filters in enumerate((32, 64, 128, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name="conv2d" if i == 0 else f"conv2d_{i}")(x)
        x = keras.layers.MaxPooling2D(name="max_pooling2d" if i == 0 else f"max_pooling2d_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="prediction")(x)


def build(key: str, *, weights: Path | None = None) -> Any:
    """Build architecture ``key`` untrained, or with a local ImageNet (no-top) weights file for the backbone.

    Weights cannot be downloaded on a unit or in CI, so only a file the user already has is accepted.
    """
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {key!r}; known: {', '.join(ARCHITECTURES)}")
    _, keras = tf_keras()
    arch = ARCHITECTURES[key]
    inp = keras.Input((arch.size, arch.size, 3), name="image")
    w = str(weights) if weights else None
    if key == "cnn":
        if weights:
            raise ValueError("the custom CNN has no pretrained backbone; --weights applies to mobilenetv2 and "
                             "efficientnetb0")
        out = _custom_cnn(keras, inp)
    elif key == "mobilenetv2":
        # input_tensor= builds the backbone's layers into this graph, so get_layer('Conv_1') works (not nested).
        base = keras.applications.MobileNetV2(input_tensor=inp, include_top=False, weights=w)
        out = _head(keras, base.output, 0.2)
    else:
        base = keras.applications.EfficientNetB0(input_tensor=inp, include_top=False, weights=w)
        out = _head(keras, base.output, 0.2)
    model = keras.Model(inp, out, name=key)
    for name in (arch.gradcam_layer, *arch.heatmap_layers):
        model.get_layer(name)  # fails loudly if a Keras release renames it
    if weights is None:
        # From scratch, the backbones' BatchNorm momentum of 0.99-0.999 needs thousands of steps before its moving
        # statistics describe the data; with a few epochs, inference-mode outputs would be meaningless.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return model
