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


def test_auto_prefers_the_variant_that_agrees_more_when_speed_ties() -> None:
    """float16 changed 2 calls in 400 and float32 none, at the same speed: size alone chose float16."""
    from converter.export import fastest

    rows = [{"quantization": "float16", "verdict": "passed", "latency_ms_tflite": 1.00, "size_bytes": 50,
             "agreement": 0.995},
            {"quantization": "float32", "verdict": "passed", "latency_ms_tflite": 1.02, "size_bytes": 100,
             "agreement": 1.0},
            {"quantization": "int8", "verdict": "passed", "latency_ms_tflite": 2.0, "size_bytes": 25,
             "agreement": 1.0}]
    best = fastest(rows)
    assert best is not None and best["quantization"] == "float32"
    assert rows[0]["reason"] == "met parity, as fast, agrees less: 0.9950 against 1.0000"
    assert rows[2]["reason"].startswith("met parity, slower")


def test_log_loss_sees_the_shift_that_auc_does_not() -> None:
    from converter.metrics import log_loss, roc_auc

    y = np.array([0, 0, 1, 1], bool)
    p = np.array([0.1, 0.2, 0.8, 0.9])
    shifted = p * 0.3 + 0.6  # the same order, every call now defective: a wrong pixel scaling's effect
    assert roc_auc(y, p) == roc_auc(y, shifted) == 1.0
    assert log_loss(y, shifted) - log_loss(y, p) > 0.3


def test_threads_carry_their_names_into_the_kernel() -> None:
    """What ``top -H`` and bench.mqtt's per-thread CPU read: the thread's own name, cut to the kernel's 15 bytes."""
    import threading
    from pathlib import Path

    from edge.metrics import name_os_threads

    started, stop = threading.Event(), threading.Event()

    def wait() -> None:
        started.set()
        stop.wait(10)

    t = threading.Thread(target=wait, name="capture-and-a-long-name", daemon=True)
    t.start()
    started.wait(5)
    try:
        assert name_os_threads() >= 1
        assert Path(f"/proc/self/task/{t.native_id}/comm").read_text().strip() == "capture-and-a-l"
    finally:
        stop.set()
        t.join(5)


def test_a_unit_that_takes_no_releases_never_loads_the_release_client() -> None:
    """TUF and its cryptography add 10 MB to the daemon's peak memory (bench.mqtt's daemon_rss_mb, 98 → 110 MB): only
    a unit with ``releases.url`` pays for them."""
    import subprocess
    import sys

    from harness import REPO

    code = ("import sys, edge.daemon, edge.control, edge.rollout; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tuf', 'securesystemslib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
