"""``defect-convert train``: fit a reference architecture on a labelled folder and save the legacy ``.h5`` users have.

Validation split (stratified), augmentation that suits top-view parts (flips, quarter turns, lighting), class weights
for unbalanced lines, early stopping on validation loss with the best weights restored, Keras' progress bar, and a
final report on the validation images: accuracy, precision/recall of the defect class, ROC AUC, confusion matrix PNG.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter import report
from converter.architectures import ARCHITECTURES, build
from converter.dataset import LabelledFolder, stratified_split
from converter.metrics import summary
from core.classifier import decide
from core.manifest import Decision, InputSpec, PixelScaling
from core.preprocess import Preprocessor, pixel_affine
from edge.tfload import tf_keras

# Training reads images exactly as the edge's float path does: RGB, bilinear resize, x/255.
PIXEL_SCALING: PixelScaling = "unit"


@dataclass(frozen=True)
class TrainSettings:
    arch: str
    epochs: int = 15
    batch_size: int = 32
    val_split: float = 0.2
    learning_rate: float = 1e-3
    patience: int = 4
    seed: int = 0
    limit: int | None = None  # at most this many images from the folder (both classes, evenly)
    weights: Path | None = None


def input_spec(arch: str) -> InputSpec:
    size = ARCHITECTURES[arch].size
    return InputSpec(height=size, width=size, dtype="float32", pixel_scaling=PIXEL_SCALING)


def dataset(tf: Any, pixels: np.ndarray, labels: np.ndarray, *, batch: int, augment: bool, seed: int,
            scaling: PixelScaling = PIXEL_SCALING) -> Any:
    """A tf.data pipeline of uint8 pixels scaled as the model reads them, augmented as top-view parts allow."""
    factor, offset = pixel_affine(scaling)
    ds = tf.data.Dataset.from_tensor_slices((pixels, labels.astype(np.float32)[:, None]))
    if augment:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)

    def prepare(x: Any, y: Any) -> tuple[Any, Any]:
        x = tf.cast(x, tf.float32) * factor + offset
        if augment:  # a part seen from above may lie in any orientation and under slightly different light
            x = tf.image.rot90(x, tf.random.uniform([], 0, 4, tf.int32))
            x = tf.image.random_flip_left_right(x)
            x = tf.image.random_brightness(x, 0.08 * (factor * 255))
            x = tf.image.random_contrast(x, 0.85, 1.15)
        return x, y

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)


def split(folder: LabelledFolder, pre: Preprocessor, val_split: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
    """The folder's pixels at the model's size and labels, a stratified training and validation split, and balanced
    class weights (each class counts as if the line produced both equally); ValueError for a split lacking a class."""
    pixels, labels = folder.pixels(pre)
    train_idx, val_idx = stratified_split(labels, val_split, seed)
    counts = np.bincount(labels[train_idx], minlength=2)
    if counts.min() == 0:
        raise ValueError(f"{folder.root}: the training split has no {'good' if counts[0] == 0 else 'defect'} image")
    return pixels, labels, train_idx, val_idx, {c: float(len(train_idx) / (2 * counts[c])) for c in (0, 1)}


def train(folder: LabelledFolder, out_h5: Path, settings: TrainSettings) -> dict[str, Any]:
    """Train, save ``out_h5`` (legacy HDF5) and its report beside it; return the report."""
    tf, keras = tf_keras()
    keras.utils.set_random_seed(settings.seed)
    folder = folder.sample(settings.limit, settings.seed)
    t0 = time.perf_counter()
    pixels, labels, train_idx, val_idx, class_weight = split(folder, Preprocessor(input_spec(settings.arch)),
                                                             settings.val_split, settings.seed)
    counts = np.bincount(labels[train_idx], minlength=2)
    print(f"training {settings.arch} on {len(train_idx)} images ({counts[0]} good, {counts[1]} defect), "
          f"validating on {len(val_idx)}; {len(folder.skipped)} unreadable skipped", file=sys.stderr)
    model = build(settings.arch, weights=settings.weights)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc"), "accuracy"])
    train_ds = dataset(tf, pixels[train_idx], labels[train_idx], batch=settings.batch_size, augment=True,
                        seed=settings.seed)
    val_ds = dataset(tf, pixels[val_idx], labels[val_idx], batch=settings.batch_size, augment=False,
                      seed=settings.seed)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, restore_best_weights=True)
    history = model.fit(train_ds, validation_data=val_ds, epochs=settings.epochs, class_weight=class_weight,
                        callbacks=[stop], verbose=1 if sys.stderr.isatty() else 2)
    p_val = model.predict(val_ds, verbose=0).reshape(-1)
    rule = Decision()
    predicted = np.array([decide(float(p), rule)[0] for p in p_val])
    result: dict[str, Any] = {
        "architecture": settings.arch,
        "gradcam_layer": ARCHITECTURES[settings.arch].gradcam_layer,
        "data": str(folder.root),
        "images": {"train": len(train_idx), "validation": len(val_idx),
                   "unreadable_skipped": len(folder.skipped)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()},
        "epochs_run": len(history.history["loss"]),
        "history": {k: [round(float(x), 5) for x in v] for k, v in history.history.items()},
        "validation": summary(labels[val_idx], p_val, predicted),
        "seconds": round(time.perf_counter() - t0, 1),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_h5.with_name(f".{out_h5.stem}.tmp.h5")
    model.save(tmp, include_optimizer=False)  # legacy HDF5: the format users' files are in
    tmp.replace(out_h5)
    stem = out_h5.with_suffix("")
    report.confusion_png(result["validation"]["confusion"], Path(f"{stem}.confusion.png"),
                         title=f"{settings.arch}: validation")
    Path(f"{stem}.train.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.train.md").write_text(report.training_markdown(result))
    return result
