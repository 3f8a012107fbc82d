"""The small CNN the tests and the real-photo belt train: real Keras layers (convolutions, batch normalisation, pooled
features, a Dense head), small enough to train in seconds to minutes on 2 cores."""

from __future__ import annotations

from typing import Any


def build_tiny(keras: Any, size: int = 64, *, outputs: int = 1, name: str = "tiny") -> Any:
    """A small CNN with the reference head (sigmoid) or a 2-class softmax head."""
    k = keras
    inp = k.Input((size, size, 3), name="image")
    x = inp
    for i, f in enumerate((16, 32, 64)):
        x = k.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = k.layers.BatchNormalization(momentum=0.9, name=f"bn_{i}")(x)
        x = k.layers.ReLU(name=f"relu_{i}")(x)
        x = k.layers.MaxPooling2D(name=f"pool_{i}")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    act = "sigmoid" if outputs == 1 else "softmax"
    out = k.layers.Dense(outputs, activation=act, name="prediction")(x)
    return k.Model(inp, out, name=name)
