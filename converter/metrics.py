"""Binary classification figures in plain NumPy (no scikit-learn on a unit or in CI)."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count half). NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """2 x 2 matrix [[TN, FP], [FN, TP]] with rows = truth (good, defect)."""
    y, p = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    return np.array([[int((~y & ~p).sum()), int((~y & p).sum())], [int((y & ~p).sum()), int((y & p).sum())]])


def summary(labels: np.ndarray, p_defect: np.ndarray, predicted: np.ndarray) -> dict[str, object]:
    """Accuracy, precision and recall of the defect class, ROC AUC and the confusion matrix."""
    cm = confusion(labels, predicted)
    (tn, fp), (fn, tp) = cm
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": (tn + tp) / n if n else float("nan"),
        "precision_defect": tp / (tp + fp) if tp + fp else 0.0,
        "recall_defect": tp / (tp + fn) if tp + fn else 0.0,
        "roc_auc": roc_auc(labels, p_defect),
        "confusion": cm.tolist(),
    }


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of the two classes' recalls: 0.5 is chance whatever the classes' shares, below it is worse than chance."""
    (tn, fp), (fn, tp) = confusion(labels, predicted)
    return float((tn / (tn + fp) + tp / (tp + fn)) / 2) if (tn + fp) and (tp + fn) else float("nan")


def log_loss(labels: np.ndarray, p: np.ndarray, eps: float = 1e-6) -> float:
    """Mean binary cross-entropy of ``p`` (P(class 1)) against ``labels``, in nats: how far the probabilities are
    from the truth, where the threshold lies included (ROC AUC is blind to a shift of p that keeps its order)."""
    q = np.clip(p.astype(np.float64), eps, 1 - eps)
    y = labels.astype(bool)
    return float(-np.mean(np.where(y, np.log(q), np.log(1 - q))))
