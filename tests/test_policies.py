"""The pure decisions of the unit and the relay, driven with their ``now=`` and no process around them: which frames
alert (hysteresis, re-arming, repeats), which alerts mail and which digest, what the unit forgets, what the ring keeps,
and what the relay lets in."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from contract import payloads, topics
from core.classifier import Prediction
from edge.alerts import Alert, AlertPolicy
from edge.health import Health
from edge.history import History
from edge.ringbuffer import Buffered, FrameRing
from relay import config as relay_config
from relay import intake, mailer
from relay.queue import Store
from relay.render import Renderer
from relay.storm import Scheduler


def pred(p: float, *, band: tuple[float, float] = (0.4, 0.6)) -> Prediction:
    return Prediction(label="defective" if p > 0.5 else "good", defective=p > 0.5, p_defect=p,
                      confidence=max(p, 1 - p), threshold=0.5, low_confidence=band[0] <= p <= band[1], model="m",
                      sha256="0" * 64)


def kinds(policy: AlertPolicy, ps: list[float], *, start: float = 0.0, step: float = 0.1) -> list[list[str]]:
    return [[a.kind for a in policy.on_result(f"f{i}", pred(p), now=start + i * step)] for i, p in enumerate(ps)]


def test_one_bad_part_is_one_alert_and_a_new_part_rearms() -> None:
    policy = AlertPolicy("u1", rearm_after_good_frames=3, repeat_after_s=0)
    fired = kinds(policy, [0.9, 0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.95])
    assert fired == [["defect"], [], [], [], [], [], [], [], [], ["defect"]]
    assert policy.suppressed == 3, "two frames of the first part, and the second part seen after too few good frames"


def test_the_same_part_still_bad_alerts_again_after_repeat_after_s() -> None:
    policy = AlertPolicy("u1", repeat_after_s=1.0)
    fired = kinds(policy, [0.9] * 25, step=0.1)
    assert [i for i, f in enumerate(fired) if f] == [0, 10, 20]


def test_low_confidence_and_defect_are_armed_separately_and_can_be_off() -> None:
    policy = AlertPolicy("u1", on_defect=False, rearm_after_good_frames=2, repeat_after_s=0)
    fired = kinds(policy, [0.55, 0.9, 0.45, 0.1, 0.2, 0.45])
    assert fired == [["low_confidence"], [], [], [], [], ["low_confidence"]]
    alert = AlertPolicy("u1").on_result("u1-1-7", pred(0.9), now=0)[0]
    assert alert.dedup_key == "u1:defect:u1-1-7" and alert.detail["p_defect"] == 0.9


def relay_cfg(tmp: Path, **storm: float) -> relay_config.RelayConfig:
    return relay_config.parse({"state": {"dir": str(tmp)}, "delivery": {"evidence_wait_s": 0}, "time_zone": "UTC",
                               "storm": {"cooldown_s": 60, "digest_window_s": 30, **storm},
                               "routes": [{"devices": ["line3-*"], "recipients": ["lead@plant.example"]}]})


def accept(store: Store, device: str, n: int, kind: str = "defect") -> None:
    alert = payloads.Alert(device_id=device, kind=kind, frame_id=f"{device}-1-{n:09d}",
                           dedup_key=f"{device}:{kind}:{n}", label="defective", p_defect=0.9)
    store.accept_alert(alert.dedup_key, device, kind, alert.frame_id, payloads.dumps(alert).decode())


def test_first_alert_mails_then_a_storm_is_one_digest(tmp_path: Path) -> None:
    cfg = relay_cfg(tmp_path)
    store = Store(tmp_path / "relay.db")
    sched = Scheduler(cfg, store, Renderer(cfg))
    accept(store, "line3-a", 0)
    now = time.time() + 1  # the scheduler's clock; alerts were received just before
    sched.tick(now)
    assert len(store.due()) == 1
    for n in range(1, 40):
        accept(store, "line3-a", n)
    sched.tick(now + 1)
    assert len(store.due()) == 1, "alerts inside the cooldown wait in a digest"
    sched.tick(now + 32)
    due = store.due()
    assert len(due) == 2
    digest = email.message_from_bytes(due[1].body, policy=email.policy.default)
    assert digest["Subject"] == "line3-a: 39 × defective part in 0 s"  # received within the second
    accept(store, "other-b", 1)
    sched.tick(now + 33)
    assert store.counters()["alerts_unrouted"] == 1 and len(store.due()) == 2
    store.close()


def test_alert_kinds_read_as_what_they_are_in_mail(tmp_path: Path) -> None:
    cfg = relay_cfg(tmp_path)
    renderer = Renderer(cfg)
    subjects = {}
    for alert in ({"kind": "camera_offline", "since": "2026-11-28T03:00:00.000Z", "error": "stalled"},
                  {"kind": "camera_back", "since": "2026-11-28T03:00:00.000Z", "offline_s": 250.0},
                  {"kind": "model_error", "frame_errors": 3, "error": "bad frame", "model": "m"},
                  {"kind": "defect", "label": "defective", "p_defect": 0.93, "confidence": 0.93}):
        mail = mailer.alert_mail(cfg, renderer, {"device_id": "press.7", "frame_id": None, "dedup_key": "k",
                                                 "ts": "2026-11-28T03:04:10.000Z", **alert}, {}, ["a@b.example"])
        msg = email.message_from_bytes(mail, policy=email.policy.default)
        subjects[alert["kind"]] = msg["Subject"]
        text = msg.get_body(("plain",)).get_content()
        assert "not inspecting" in text or alert["kind"] != "camera_offline"
        assert text.rstrip().endswith("| key k | 2026-11-28T03:04:10.000Z"), "technical ids last"
    assert subjects == {"camera_offline": "press.7: camera offline since Sat 28 Nov 2026, 03:00 UTC",
                        "camera_back": "press.7: camera back after 4 min",
                        "model_error": "press.7: the model failed on 3 frame(s)",
                        "defect": "press.7: defective part (sure, p 0.930)"}


def test_relay_intake_takes_alerts_and_jpegs_and_refuses_the_rest() -> None:
    where = intake.route_topic("defect-edge", "defect-edge/line3-a/gradcam/line3-a-1-000000001")
    assert (where.what, where.device_id, where.key) == ("gradcam_image", "line3-a", "line3-a-1-000000001")
    intake.check_image(where, b"\xff\xd8jpeg", 100)
    for topic, reason in (("defect-edge/line3-a/result", "bad_topic"), ("defect-edge/line3-a/metrics", "bad_topic"),
                          ("defect-edge/a b/alert", "bad_device_id")):
        with pytest.raises(intake.Rejected) as e:
            intake.route_topic("defect-edge", topic)
        assert e.value.reason == reason
    with pytest.raises(intake.Rejected) as e:
        intake.check_image(where, b"GIF89a", 100)
    assert e.value.reason == "not_jpeg"
    with pytest.raises(intake.Rejected) as e:
        intake.check_image(where, b"\xff\xd8" + b"x" * 200, 100)
    assert e.value.reason == "oversize"
    good = {"schema": 1, "device_id": "line3-a", "ts": "2026-11-28T03:00:00.000Z", "kind": "defect",
            "frame_id": None, "dedup_key": "k1"}
    assert intake.parse_alert("line3-a", json.dumps(good).encode(), 1000).dedup_key == "k1"


def test_history_forgets_by_age_and_by_count(tmp_path: Path) -> None:
    h = History(tmp_path / "state.db", retention_days=1, max_rows=1000)
    now = time.time()
    for i in range(1500):
        h.add_result(f"f{i}", now - 2 * 86400 if i < 100 else now - i, "good", 0.1, 0.9, False, "m", {"x": 1.0})
    assert h.flush() == 1500
    assert h.prune(now) == 100 + 400
    assert h.count("results") == 1000
    kept = {r for (r,) in h._db.execute("SELECT frame_id FROM results").fetchall()}
    assert "f100" in kept and "f1499" not in kept, "the newest are kept"
    stored = h._db.execute("SELECT timings FROM results WHERE frame_id = 'f100'").fetchone()[0]
    assert isinstance(stored, str) and json.loads(stored) == {"x": 1.0}, "the timings as JSON text"
    h.add_result("f100", now, "good", 0.1, 0.9, False, "m", {})  # already stored: not a new row
    for i in range(1500, 1510):
        h.add_result(f"f{i}", now, "good", 0.1, 0.9, False, "m", {})
    assert h.flush() == 10
    assert h.prune(now) == 10 and h.count("results") == 1000, "the count kept in memory is the table's"
    h.close()
    h = History(tmp_path / "state.db", retention_days=1, max_rows=990)
    assert h.prune(now) == 10 and h.count("results") == 990, "and is read again at start"
    h.close()


def test_a_flush_or_a_prune_never_holds_up_the_inference_loop(tmp_path: Path) -> None:
    h = History(tmp_path / "state.db")
    with h._lock:  # the database busy, as during a slow flush or prune on an SD card
        adder = threading.Thread(target=h.add_result, args=("f1", time.time(), "good", 0.1, 0.9, False, "m", {}))
        adder.start()
        adder.join(timeout=10)
        assert not adder.is_alive(), "add_result waited for the database"
    assert h.flush() == 1
    h.close()


def test_the_ring_is_bounded_by_frames_and_by_bytes() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)  # 300 bytes
    ring = FrameRing(max_frames=5, max_bytes=1000)
    for i in range(8):
        ring.add(Buffered(f"f{i}", frame, "RGB", pred(0.1), float(i)))
    assert [ring.get(f"f{i}") is not None for i in range(8)] == [False] * 5 + [True] * 3
    ring = FrameRing(max_frames=5, max_bytes=10_000)
    for i in range(8):
        ring.add(Buffered(f"f{i}", frame, "RGB", pred(0.1), float(i)))
    assert ring.get("f2") is None and ring.get("f3") is not None


def test_the_sampler_takes_an_even_share_bounded_per_minute() -> None:
    from edge.alerts import Sampler

    s = Sampler(0.1, per_minute=3)
    taken = [i for i in range(100) if s.take(now=i * 0.1)]  # 100 calls in 10 s
    assert taken == [9, 19, 29], "every tenth call, three a minute at most"
    assert [i for i in range(100, 130) if s.take(now=60 + i * 0.1)] == [109, 119, 129], "a minute later, again"
    assert not any(Sampler(0.0, 10).take(now=i) for i in range(50))


def test_a_camera_gone_is_alerted_once_and_its_return_too() -> None:
    """Whoever was told the camera went hears that it came back, after how long; a blip shorter than the alert
    delay says nothing either way."""
    camera = SimpleNamespace(state="streaming", stats=SimpleNamespace(last_error="no frame for 5 s"))
    raised: list[tuple[Alert, str]] = []
    watched = SimpleNamespace(device_id="press.7", camera=camera)
    health = Health(watched, offline_alert_after_s=30, alert=lambda a, ts: raised.append((a, ts)),  # type: ignore[arg-type]
                    changed=lambda: None)
    t = 1_796_457_600.0
    camera.state = "reconnecting"
    health.watch_camera(t)
    health.watch_camera(t + 10)
    camera.state = "streaming"
    health.watch_camera(t + 12)
    assert raised == [], "a blip under offline_alert_after_s"
    camera.state = "reconnecting"
    for dt in (100, 131, 200):
        health.watch_camera(t + dt)
    camera.state = "streaming"
    health.watch_camera(t + 340)
    health.watch_camera(t + 341)
    assert [(a.kind, a.detail) for a, _ in raised] == [
        ("camera_offline", {"since": topics.iso(t + 100), "error": "no frame for 5 s"}),
        ("camera_back", {"since": topics.iso(t + 100), "offline_s": 240.0})]
    assert raised[0][0].dedup_key != raised[1][0].dedup_key
