"""Class activation maps for the product's classifiers, as one compiled TensorFlow function per model.

What is explained: the defect score before its squashing, as Grad-CAM prescribes (the pre-softmax class score).
For a sigmoid head that is the logit of p_defect; for a 2-class softmax, the defective logit minus the other one.
The probability itself would not do: a confident model's sigmoid sits at 1.000 where its gradient vanishes, and the
heatmap would be blank exactly when the defect is clearest. A heatmap therefore shows where the model found evidence
*for a defect*; on a part called good it is the (weak) evidence that was not enough, which is what an operator
checking a missed defect wants to see.

Methods, all from one gradient of the score with respect to one or more layers' feature maps:
- ``gradcam``: channels weighted by their mean gradient (Selvaraju et al. 2017). Behind a Flatten+Dense head each
  position has its own weights, and a channel's gradients of opposite signs cancel in the mean (the custom CNN's
  heatmaps missed its defects for this reason; MobileNetV2's, for the coarseness of its 7x7 layer: docs/gradcam.md).
- ``gradcam++``: weights from higher powers of the gradient (Chattopadhyay et al. 2018).
- ``layercam``: each position weighted by its own positive gradient (Jiang et al. 2021); no averaging, so it stays
  sharp at higher-resolution layers.
- ``hirescam``: gradient times activation per position, summed over channels (Draelos & Carin 2020).
Several layers are fused (LayerCAM's own recipe) by normalising each map and averaging them at the finest resolution.
Which layer and method suit a model is measured, not assumed: ``converter/explain.py``.
The eager computation costs about 240 ms on MobileNetV2 here; compiled with ``tf.function`` about 13 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.payloads import CAM_METHODS, CamMethod, HeatmapMethod
from edge.tfload import tf_keras

METHODS = CAM_METHODS  # the order of all_methods()' maps


class LayerNotFoundError(ValueError):
    """The manifest's Grad-CAM layer is not in the model."""


@dataclass(frozen=True)
class Heatmap:
    cam: np.ndarray  # h x w float32 in [0, 1], at the finest layer's resolution
    p_defect: float  # the Keras model's own p_defect for this input
    method: CamMethod  # the method used ("auto" resolved)
    layers: tuple[str, ...]


def feature_map_layers(model: Any) -> list[str]:
    """Names of the layers with a 4-D (batch, h, w, channels) output, in model order."""
    return [layer.name for layer in model.layers if len(getattr(getattr(layer, "output", None), "shape", ())) == 4
            and not type(layer).__name__.startswith("Input")]


class GradCam:
    def __init__(self, model: Any, layers: str | Sequence[str], *, method: HeatmapMethod = "gradcam",
                 defect_index: int = 0, p_is_good: bool = False):
        """``layers``: one layer's name, or several to fuse; ``method``: what "auto" means for this model.
        ``p_is_good``: a sigmoid trained with defective as class 0; its logit is the evidence for *good*."""
        tf, keras = tf_keras()
        names = [layers] if isinstance(layers, str) else list(layers)
        targets = []
        for name in names:
            try:
                targets.append(model.get_layer(name))
            except ValueError:
                raise LayerNotFoundError(f"layer {name!r} is not in the model (last feature-map layers: "
                                         f"{', '.join(feature_map_layers(model)[-5:])})") from None
        self.layers = tuple(names)
        self.method: CamMethod = "gradcam" if method == "auto" else method
        head = model.layers[-1]
        logits = hasattr(head, "kernel") and getattr(head.activation, "__name__", "") in ("sigmoid", "softmax")
        grad_model = keras.Model(model.inputs, [[t.output for t in targets], head.input if logits else model.output,
                                                model.output])

        def p_of(out: Any) -> Any:
            return 1.0 - out[:, 0] if p_is_good else out[:, defect_index]

        def normalised(c: Any) -> Any:
            return c / tf.maximum(tf.reduce_max(c, axis=(1, 2), keepdims=True), 1e-12)

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]  # TensorFlow is untyped
        def compute(x: Any) -> tuple[Any, Any]:
            """Every method's map at once (batch x methods x h x w): one gradient, a few cheap sums more."""
            with tf.GradientTape() as tape:
                maps, before, out = grad_model(x, training=False)
                if logits:  # the head's pre-activation, computed with its own weights
                    z = tf.matmul(before, head.kernel) + (head.bias if head.use_bias else 0.0)
                    score = z[:, 0] if z.shape[-1] == 1 else z[:, defect_index] - z[:, 1 - defect_index]
                else:
                    score = before[:, defect_index]
                if p_is_good:
                    score = -score
            per_layer = []
            for a, g in zip(maps, tape.gradient(score, maps), strict=True):
                g2, g3 = g**2, g**3  # Grad-CAM++'s closed form with powers of the gradient
                denom = 2.0 * g2 + tf.reduce_sum(a, axis=(1, 2), keepdims=True) * g3
                alpha = g2 / tf.where(denom != 0.0, denom, tf.ones_like(denom))
                weighted = {"gradcam": a * tf.reduce_mean(g, axis=(1, 2))[:, None, None, :],
                            "gradcam++": a * tf.reduce_sum(alpha * tf.nn.relu(g), axis=(1, 2))[:, None, None, :],
                            "layercam": a * tf.nn.relu(g), "hirescam": a * g}
                per_layer.append(tf.stack([tf.nn.relu(tf.reduce_sum(weighted[m], axis=-1)) for m in METHODS], -1))
            size = max((c.shape[1], c.shape[2]) for c in per_layer)
            fused = tf.add_n([tf.image.resize(normalised(c), size) for c in per_layer]) if len(per_layer) > 1 \
                else per_layer[0]
            return tf.transpose(fused, (0, 3, 1, 2)), p_of(out)

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
        def forward(x: Any) -> Any:
            return p_of(model(x, training=False))

        self._compute, self._forward = compute, forward

    def all_methods(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Every method's map for one input (methods x h x w, each scaled to [0, 1], in ``METHODS`` order) and the
        Keras model's p_defect."""
        cams, score = self._compute(x[None])
        c = np.asarray(cams[0], np.float32)
        peak = c.max(axis=(1, 2), keepdims=True)
        return np.where(peak > 0, c / np.where(peak > 0, peak, 1.0), c), float(np.asarray(score)[0])

    def p_defect(self, xs: np.ndarray) -> np.ndarray:
        """The Keras model's p_defect for a batch of preprocessed inputs."""
        return np.asarray(self._forward(xs), np.float64)

    def __call__(self, x: np.ndarray, method: HeatmapMethod = "auto") -> Heatmap:
        """``x``: one preprocessed input (H x W x C float32, as for Keras)."""
        chosen = self.method if method == "auto" else method
        cams, p = self.all_methods(x)
        return Heatmap(cam=cams[METHODS.index(chosen)], p_defect=p, method=chosen, layers=self.layers)
