"""Human-readable reports: training summaries and parity proofs as Markdown and PNG.

Matplotlib is imported inside the functions with the file-only Agg backend: a unit or CI has no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if np.isnan(v) else f"{v:.4f}"
    return str(v)


def confusion_png(cm: list[list[int]], path: Path, *, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=110)
    arr = np.asarray(cm)
    ax.imshow(arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > arr.max() / 2 else "black")
    ax.set_xticks([0, 1], ["good", "defect"])
    ax.set_yticks([0, 1], ["good", "defect"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def training_markdown(r: dict[str, Any]) -> str:
    v = r["validation"]
    (tn, fp), (fn, tp) = v["confusion"]
    return "\n".join([
        f"# Training report: {r['architecture']}",
        "",
        f"Data: `{r['data']}`; {r['images']['train']} training and {r['images']['validation']} validation images "
        f"({r['images']['unreadable_skipped']} unreadable skipped); {r['epochs_run']} epochs in {r['seconds']} s.",
        "",
        "| validation | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v[k])} |" for k in ("accuracy", "precision_defect", "recall_defect", "roc_auc")],
        "",
        "| true \\ predicted | good | defect |",
        "|---|---|---|",
        f"| good | {tn} | {fp} |",
        f"| defect | {fn} | {tp} |",
        "",
    ])


def retrain_markdown(r: dict[str, Any]) -> str:
    """The old model against the new on the held-out reviewed items, with the items where they differ."""
    o, n = r["eval"]["old"], r["eval"]["new"]
    rows = [(k, o[k], n[k]) for k in ("accuracy", "recall_defect", "false_reject", "precision_defect", "roc_auc")]
    return "\n".join([
        f"# Retraining: {Path(r['new']).name} from {Path(r['old']).name}: **{r['verdict']}**",
        "",
        f"Data: `{r['data']}`; fine-tuned on {r['images']['train']} reviewed images ({r['images']['validation']} "
        f"for early stopping), {r['epochs_run']} epochs in {r['seconds']} s; input as {r['convention']}. Judged on "
        f"the {r['images']['eval']} newest reviewed items, held out.",
        "",
        "| held out | old | new |",
        "|---|---|---|",
        *[f"| {k} | {_fmt(a)} | {_fmt(b)} |" for k, a, b in rows],
        f"| agreement of their calls | {_fmt(r['agreement'])} | |",
        "",
        f"Items where their calls differ ({len(r['differ'])}):",
        "",
        "| file | truth | p old | p new |",
        "|---|---|---|---|",
        *[f"| {d['file']} | {d['truth']} | {d['p_old']:.3f} | {d['p_new']:.3f} |" for d in r["differ"][:100]],
        "",
    ])


def parity_png(p_keras: np.ndarray, p_tflite: np.ndarray, labels: np.ndarray, threshold: float, path: Path,
               *, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    for cls, colour, name in ((0, "tab:green", "good"), (1, "tab:red", "defect")):
        sel = labels == cls
        ax.scatter(p_keras[sel], p_tflite[sel], s=8, alpha=0.6, c=colour, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.axvline(threshold, color="black", lw=0.6, ls=":")
    ax.axhline(threshold, color="black", lw=0.6, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("p_defect, Keras")
    ax.set_ylabel("p_defect, TFLite")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parity_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Parity report: {r['name']}",
        "",
        f"Source `{r['source']}`; evaluated on {r['eval']['n']} images from `{r['eval']['folder']}` "
        f"({r['eval']['unreadable_skipped']} unreadable skipped). Decision: p_defect > {r['threshold']}.",
        "",
        "| quantization | verdict | agreement | acc. Keras | acc. TFLite | mean abs dp | max abs dp | AUC Keras "
        "| AUC TFLite | size | latency TFLite | latency Keras |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["candidates"]:
        if "agreement" not in c:
            lines.append(f"| {variant(c)} | {c['verdict']} | | | | | | | | | | |")
            continue
        lines.append(
            f"| {variant(c)} | {c['verdict']} | {c['agreement']:.4f} | {c['accuracy_keras']:.4f} | "
            f"{c['accuracy_tflite']:.4f} | {c['mean_abs_dp']:.4f} | {c['max_abs_dp']:.4f} | "
            f"{_fmt(c['auc_keras'])} | {_fmt(c['auc_tflite'])} | {c['size_bytes'] / 1e6:.2f} MB "
            f"(.h5 {r['source_size_bytes'] / 1e6:.2f} MB) | {c['latency_ms_tflite']:.2f} ms | "
            f"{c['latency_ms_keras']:.1f} ms |")
    lines += ["", f"Chosen: **{r['chosen'] or 'none'}** (minimum agreement {r['min_agreement']}).", ""]
    shipped = [c["variant"] for c in r["candidates"] if c.get("variant")]
    if shipped:
        lines += [f"Also shipped, for units to time on their own hardware and run the fastest there "
                  f"(docs/releases.md): {', '.join(f'`{name}`' for name in shipped)}.", ""]
    v = r.get("verification")
    if v:
        lines += [f"Verification set `{v['file']}`: {v['images']} images a unit re-runs on its own runtime "
                  f"(`defect-edge verify-model`): its p must stay within {v['platform_allowance']:g} of this "
                  "machine's TFLite p (another platform's kernels: the most seen between x86 and aarch64 for this "
                  "quantization), and its decisions on the confident calls (Keras' p at least "
                  f"{v.get('far', 0.25):g} from the threshold) agree with Keras', 90 % or more of each side. "
                  f"Keras against TFLite here: max |dp| {v['measured_here_max_abs_dp']:.6f}.", ""]
    for c in r["candidates"]:
        if c.get("reason"):
            lines.append(f"- {variant(c)}: {c['reason']}")
    return "\n".join(lines + _conventions_markdown(r) + _heatmaps_markdown(r)) + "\n"


def variant(c: dict[str, Any]) -> str:
    """A candidate's name; a mixed one says how many layers it keeps in float."""
    if "float_layers" in c:
        return f"{c['quantization']} ({c['float_layers']} float layers)"
    if "calibration_images" in c:
        return f"{c['quantization']} ({c['calibration_images']} calibration images)"
    return str(c["quantization"])


def _heatmaps_markdown(r: dict[str, Any]) -> list[str]:
    """The heatmaps' layers and method, and every candidate's deletion score (best first)."""
    h = r.get("heatmaps")
    if not h:
        return ["", "## Heatmaps", "", "None: a SavedModel has no Keras layers to compute them at."]
    lines = ["", "## Heatmaps", "", f"**{h['method']}** on `{'+'.join(h['layers'])}`: {h['chosen_by']}."]
    if h.get("original_layer"):
        lines.append(f"Plain Grad-CAM on `{h['original_layer']}` (the original app's layer for this architecture, else "
                     "the last convolution) stays selectable: `[gradcam] layers` and `method` in edge.toml, "
                     "`defect-edge gradcam --layer --method`.")
    if h["candidates"]:
        lines += ["", "| layers | method | p_defect drop, hottest 10 % blurred |", "|---|---|---|"]
        lines += [f"| `{c['layers']}` | {c['method']} | {c['deletion_drop']:.3f} |" for c in h["candidates"]]
        lines.append(f"| (random 10 %) | | {h['random_drop']:.3f} |")
    return lines


def _conventions_markdown(r: dict[str, Any]) -> list[str]:
    """What the model was taken to expect and mean, how each was decided, and the readings that decided it."""
    conv, det = r["conventions"], r["detection"]
    lines = ["", f"## Conventions ({r['file_format']} file)", "", "| convention | value | decided |", "|---|---|---|"]
    for key, c in conv.items():
        value = f"{c['value']} ({c['meaning']})" if "meaning" in c else str(c["value"])
        lines.append(f"| {key.replace('_', ' ')} | {value} | {c['decided']} |")
    lines += ["", "Scaling layers inside the model: " + ("; ".join(det["scaling_layers"]) or "none") + ".", "",
              "Every reading tried on the evaluation set (balanced accuracy 0.5 is chance):", "",
              "| pixel scaling | defective class | balanced accuracy at the threshold | log-loss | ROC AUC |",
              "|---|---|---|---|---|"]
    for t in det["readings"]:
        lines.append(f"| {t['pixel_scaling']} | {t['defect_class']} | {_fmt(t['balanced_accuracy'])} | "
                     f"{_fmt(t.get('log_loss'))} | {_fmt(t['auc'])} |")
    if len(det["scalings_tried"]) == 1:
        lines += ["", "Other pixel scalings were not tried: this one's log-loss is under the 0.1 margin by which "
                      "another reading would have to beat it."]
    lines += [""] + [f"- {note}" for note in det["notes"]]
    return lines
