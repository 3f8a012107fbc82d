"""``defect-convert train DATA --init-from NAME.h5``: a user's own model fine-tuned on the console's export of
reviewed frames, and judged against the model it would replace on the newest reviewed items, held out.

The model keeps everything a unit relies on: its architecture and layer names (so its Grad-CAM layer), its input
size and pixel convention (read from the manifest beside the ``.h5`` when there is one, else the model's own input
size and x / 255, said so), its single sigmoid output. It is fine-tuned with a small learning rate and early
stopping on a validation share of ``DATA/train``; ``DATA/eval`` (the export's newest reviewed items) is never trained
on: there both models are run and compared by accuracy, defect recall, false-reject rate (good parts called
defective) and ROC AUC, with their agreement and every item where their calls differ. The verdict says plainly
whether the new model is better: higher accuracy with a defect recall no lower, or the same accuracy with a higher
recall. Anything else reads "not better", and the report says why.
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
from converter.dataset import open_folder
from converter.metrics import summary
from converter.train import dataset, split
from core import manifest as mf
from core.classifier import decide
from core.preprocess import Preprocessor, scale_pixels
from edge.tfload import load_model, tf_keras


@dataclass(frozen=True)
class RetrainSettings:
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-4
    patience: int = 2
    val_split: float = 0.2
    seed: int = 0
    limit: int | None = None


def convention(old_h5: Path, model: Any) -> tuple[mf.InputSpec, mf.Decision, str]:
    """How the model reads its input and decides, and where that was learnt."""
    manifest = old_h5.with_suffix(".json")
    if manifest.is_file():
        m = mf.load(manifest)
        spec = m.input.model_copy(update={"dtype": "float32", "scale": 0.0, "zero_point": 0})
        return spec, m.decision, f"{manifest.name}"
    _, height, width, channels = model.input_shape
    spec = mf.InputSpec(height=int(height), width=int(width), channels=1 if channels == 1 else 3, dtype="float32",
                        pixel_scaling="unit")
    return spec, mf.Decision(), "no manifest beside it: its input size, and x / 255"


def _scores(labels: np.ndarray, p: np.ndarray, rule: mf.Decision) -> dict[str, Any]:
    called = np.array([decide(float(x), rule)[0] for x in p])
    out = summary(labels, p, called)
    good = labels == 0
    out["false_reject"] = float(called[good].mean()) if good.any() else 0.0  # good parts called defective
    return out


def retrain(data: Path, old_h5: Path, out_h5: Path, s: RetrainSettings) -> dict[str, Any]:
    """Fine-tune, compare, save ``out_h5`` and ``<out>.retrain.json``/``.md`` beside it; return the report."""
    train_dir, eval_dir = data / "train", data / "eval"
    if not (train_dir.is_dir() and eval_dir.is_dir()):
        raise ValueError(f"{data}: no train/ and eval/ in it: give the console's export (defect-console export "
                         "DIR), whose newest reviewed items are held out to judge the new model against the old")
    tf, keras = tf_keras()
    keras.utils.set_random_seed(s.seed)
    old = load_model(old_h5)
    new = load_model(old_h5)
    spec, rule, where = convention(old_h5, old)
    pre = Preprocessor(spec)
    pixels, labels, fit_idx, val_idx, class_weight = split(open_folder(train_dir).sample(s.limit, s.seed), pre,
                                                           s.val_split, s.seed)
    print(f"fine-tuning {old_h5.name} ({where}) on {len(fit_idx)} reviewed images, validating on {len(val_idx)}",
          file=sys.stderr)
    t0 = time.perf_counter()
    new.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss="binary_crossentropy")
    ds = {name: dataset(tf, pixels[idx], labels[idx], batch=s.batch_size, augment=name == "fit", seed=s.seed,
                        scaling=spec.pixel_scaling) for name, idx in (("fit", fit_idx), ("val", val_idx))}
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=s.patience, restore_best_weights=True)
    history = new.fit(ds["fit"], validation_data=ds["val"], epochs=s.epochs, class_weight=class_weight,
                      callbacks=[stop], verbose=1 if sys.stderr.isatty() else 2)
    held = open_folder(eval_dir)
    x_eval, y_eval = held.pixels(pre)
    xs = scale_pixels(x_eval, spec.pixel_scaling)
    p_old = old.predict(xs, batch_size=s.batch_size, verbose=0).reshape(-1)
    p_new = new.predict(xs, batch_size=s.batch_size, verbose=0).reshape(-1)
    before, after = _scores(y_eval, p_old, rule), _scores(y_eval, p_new, rule)
    calls_old = np.array([decide(float(x), rule)[0] for x in p_old])
    calls_new = np.array([decide(float(x), rule)[0] for x in p_new])
    readable = [p for p in held.paths if p not in held.unreadable]
    differ = [{"file": str(path.relative_to(eval_dir)), "truth": "defect" if y else "good",
               "p_old": round(float(a), 4), "p_new": round(float(b), 4)}
              for path, y, a, b, c_old, c_new in zip(readable, y_eval, p_old, p_new, calls_old, calls_new,
                                                      strict=True) if c_old != c_new]
    better = (after["accuracy"] > before["accuracy"] and after["recall_defect"] >= before["recall_defect"]) or \
        (after["accuracy"] == before["accuracy"] and after["recall_defect"] > before["recall_defect"])
    result: dict[str, Any] = {
        "old": str(old_h5), "new": str(out_h5), "data": str(data), "convention": where,
        "images": {"train": len(fit_idx), "validation": len(val_idx), "eval": len(y_eval)},
        "epochs_run": len(history.history["loss"]),
        "settings": dict(s.__dict__),
        "eval": {"old": before, "new": after}, "agreement": float(np.mean(calls_old == calls_new)),
        "differ": differ, "better": bool(better),
        "verdict": "better" if better else "not better",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_h5.with_name(f".{out_h5.stem}.tmp.h5")
    new.save(tmp, include_optimizer=False)
    tmp.replace(out_h5)
    stem = out_h5.with_suffix("")
    Path(f"{stem}.retrain.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.retrain.md").write_text(report.retrain_markdown(result))
    return result
