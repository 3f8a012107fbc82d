from __future__ import annotations

import itertools

import numpy as np

from converter.metrics import confusion, roc_auc, summary


def test_roc_auc_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.uniform(0, 1, 60), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)]
    assert abs(roc_auc(y, s) - np.mean(pairs)) < 1e-12


def test_one_class_auc_is_nan_and_confusion_layout() -> None:
    assert np.isnan(roc_auc(np.ones(4), np.arange(4)))
    assert confusion(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])).tolist() == [[1, 1], [0, 2]]
    r = summary(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.9]), np.array([0, 1, 1, 1]))
    assert r["accuracy"] == 0.75 and r["precision_defect"] == 2 / 3 and r["recall_defect"] == 1.0
