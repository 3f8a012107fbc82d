"""The store-and-forward outbox: durable, ordered, bounded, shedding the least valuable first and counting it."""

from __future__ import annotations

from pathlib import Path

from edge.mqtt.outbox import Outbox


def test_survives_reopen_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=10_000)
    ids = [box.put(f"t/{i}", b"x" * 10, kind="alert") for i in range(5)]
    box.ack([ids[1]])
    box.close()
    again = Outbox(tmp_path / "s.db", max_bytes=10_000)
    assert [m.topic for m in again.pending()] == ["t/0", "t/2", "t/3", "t/4"]
    assert [m.topic for m in again.pending(after_id=ids[2], limit=1)] == ["t/3"]
    assert again.depth() == (4, 4 * (10 + 3))


def test_full_outbox_sheds_results_then_metrics_then_images_then_alerts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=1000)
    for kind in ("alert", "result", "metrics", "image", "result", "alert", "metrics"):
        box.put("k", b"." * 99, kind=kind)  # a message's size is its topic plus its payload: 100 bytes each
    assert box.depth() == (7, 700) and not box.shed_counts()
    box.put("k", b"." * 499, kind="alert")  # 200 bytes too many: both results go
    assert [m.kind for m in box.pending()] == ["alert", "metrics", "image", "alert", "metrics", "alert"]
    assert box.shed_counts() == {"result": 2}
    box.put("k", b"." * 399, kind="alert")  # 400 too many: both metrics, the image, then the oldest alert
    assert box.shed_counts() == {"result": 2, "metrics": 2, "image": 1, "alert": 1}
    assert [m.kind for m in box.pending()] == ["alert", "alert", "alert"]
    assert box.depth() == (3, 1000)


def test_a_result_never_displaces_an_alert(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "s.db", max_bytes=300)
    box.put("a", b"." * 250, kind="alert")
    box.put("r", b"." * 100, kind="result")  # over the bound, but nothing less valuable to shed: kept
    assert [m.kind for m in box.pending()] == ["alert", "result"] and not box.shed_counts()
    box.put("m", b"." * 100, kind="metrics")  # sheds the result, not the alert
    assert [m.kind for m in box.pending()] == ["alert", "metrics"] and box.shed_counts() == {"result": 1}
