"""The unit and the relay run in the test's own process, against a real Mosquitto and a real SMTP server, with the
committed demo model (no TensorFlow, no training): the fast tier's end-to-end check of the daemon, its commands and
health watchers, the MQTT link and outbox, and the relay's intake, scheduling and mail. The slow tier runs the same
services as processes, as systemd does (``test_daemon.py``, ``test_relay.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from contract import payloads
from core import manifest as mf
from edge import config as edge_config
from edge.daemon import Daemon
from harness import REPO
from harness.broker import Broker, Collector
from harness.daemon import BASE, part_folder
from harness.smtp import Smtp
from harness.wait import drive
from relay import config as relay_config
from relay.cli import main as relay_main
from relay.service import Relay


def test_the_unit_classifies_alerts_answers_and_reports(tmp_path: Path, broker: Broker) -> None:
    cfg = edge_config.parse({
        "device": {"id": "unit1"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 1, "reconnect_max_s": 2},
        "camera": {"source": str(part_folder(tmp_path / "parts", count=6)), "fps": 15, "loop": True},
        "model": {"name": "mobilenetv2", "models_dir": str(REPO / "models"), "threshold": 0.0},
        "alerts": {"on_low_confidence": False, "repeat_after_s": 0.3, "sample_share": 0.5, "sample_per_minute": 3},
        "metrics": {"interval_s": 1}, "state": {"dir": str(tmp_path / "state")},
        "gradcam": {"enabled": False}, "homeassistant": {"enabled": True},
    })
    c = Collector(broker.port, f"{BASE}/#", "homeassistant/#")
    daemon = Daemon(cfg)
    replies: dict[str, dict[str, Any]] = {}

    def command(name: str, body: dict[str, Any]) -> dict[str, Any]:
        before = len(c.on(f"/cmd/{name}/reply"))
        c.publish(f"{BASE}/cmd/{name}", json.dumps(body))
        assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith(f"/cmd/{name}/reply")]) > before, 15)
        return dict(json.loads(c.on(f"/cmd/{name}/reply")[before]))

    def steps() -> None:
        assert c.wait(lambda m: any(t.endswith("/metrics") for t, _, _ in m)
                      and any("/snapshot/" in t for t, _, _ in m), 30)
        # A frame called defective: at threshold 0 a frame the int8 model gives p = 0.0 exactly is called good.
        frame_id = next(r["frame_id"] for r in map(json.loads, reversed(c.on("/result"))) if r["defective"])
        replies["threshold"] = command("threshold", {"threshold": 0.9, "request_id": "t1"})
        replies["feedback"] = command("feedback", {"frame_id": frame_id, "label": "good", "note": "<script>"})
        replies["model"] = command("model", {"name": "../etc/passwd"})
        replies["gradcam"] = command("gradcam", {"frame_id": frame_id})
        replies["trigger"] = command("trigger", {})

    errors = drive(daemon.request_stop, steps)
    assert daemon.run() == 0
    if errors:
        raise errors[0]
    result = payloads.read(payloads.Result, c.on("/result")[0], device_id="unit1")
    committed = mf.load(REPO / "models" / "mobilenetv2.json").quantization
    assert result.model.name == "mobilenetv2" and result.model.quantization == committed
    alert = payloads.read(payloads.Alert, c.on("/alert")[0], device_id="unit1")
    assert alert.kind == "defect" and c.on(f"/snapshot/{alert.frame_id}")[0][:2] == b"\xff\xd8"
    snapshots = {t.rsplit("/", 1)[1] for t, _, _ in c.messages if "/snapshot/" in t}
    alerted = {json.loads(p)["frame_id"] for p in c.on("/alert")}
    assert 1 <= len(snapshots - alerted) <= 3, "a sampled share of calls without an alert, at most 3 a minute"
    metrics = payloads.read(payloads.Metrics, c.on("/metrics")[0], device_id="unit1")
    assert metrics.fps > 0 and metrics.latency_ms["inference"]["p95"] > 0
    statuses = [payloads.read(payloads.Status, p, device_id="unit1") for p in c.on("/status")]
    assert statuses[-1].model.threshold == 0.9, "a threshold change republishes the retained status"
    assert replies["threshold"]["ok"] and replies["threshold"]["request_id"] == "t1"
    assert replies["feedback"]["ok"] and replies["feedback"]["result"]["correct"] is False
    assert not replies["model"]["ok"] and "unknown model" in replies["model"]["error"]
    assert not replies["gradcam"]["ok"] and "disabled" in replies["gradcam"]["error"]
    assert not replies["trigger"]["ok"] and "continuously" in replies["trigger"]["error"]
    assert len(c.on("/config")) == 6, "Home Assistant discovery"
    assert c.wait(lambda m: m[-1][0] == f"{BASE}/available" and m[-1][1] == b"offline", 10)
    c.close()


def test_the_relay_mails_an_alert_with_its_evidence(tmp_path: Path, broker: Broker) -> None:
    smtp = Smtp().start()
    cfg = relay_config.parse({
        "metrics_interval_s": 1, "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
        "delivery": {"evidence_wait_s": 10}, "state": {"dir": str(tmp_path / "relay")},
        "routes": [{"devices": ["line3-*"], "recipients": ["lead@plant.example"]}],
    })
    relay = Relay(cfg)
    pub = Collector(broker.port, "defect-relay/#", persistent=False)
    frame = "line3-a-1-000000007"
    alert = payloads.Alert(device_id="line3-a", kind="defect", frame_id=frame, dedup_key=f"line3-a:defect:{frame}",
                           label="defective", p_defect=0.93, confidence=0.93, threshold=0.5, model="m")

    def steps() -> None:
        assert pub.wait(lambda m: any(p == b"online" for _, p, _ in m), 20)
        pub.publish("defect-edge/line3-a/alert", payloads.dumps(alert))
        pub.publish("defect-edge/line3-a/alert", b"{not json")
        pub.publish(f"defect-edge/line3-a/snapshot/{frame}", b"\xff\xd8snapshot")
        pub.publish(f"defect-edge/line3-a/gradcam/{frame}", b"\xff\xd8heatmap")
        assert smtp.sink.wait(1, 30)
        assert pub.wait(lambda m: any(json.loads(p).get("counters", {}).get("rejected_not_json") for t, p, _ in m
                                      if t.endswith("/metrics")), 10)

    errors = drive(relay.stop_event.set, steps)
    try:
        assert relay.run() == 0
        if errors:
            raise errors[0]
    finally:
        smtp.stop()
        pub.close()
    rcpts, mail = smtp.sink.mails[0]
    assert rcpts == ["lead@plant.example"] and mail["Subject"] == "line3-a: defective part (sure, p 0.930)"
    status = [payloads.read(payloads.RelayStatus, p, device_id=cfg.id) for t, p, _ in pub.messages
              if t.endswith(("/status", "/metrics"))][-1]  # the contract's model, no hand-built dict
    assert status.counters["rejected_not_json"] == 1 and status.mqtt.reconnects >= 0
    assert sorted(p.get_filename() for p in mail.walk() if p.get_content_maintype() == "image") == [
        f"{frame}.gradcam.jpg", f"{frame}.snapshot.jpg"]  # inline, in the HTML part's multipart/related


def test_relay_check_config_names_a_bad_key(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "relay.toml"
    bad.write_text('[smtp]\nport = 25\nsecurty = "ssl"\n[mqtt]\nreconnect_min_s = 5\nreconnect_max_s = 1\n')
    assert relay_main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "smtp.securty: unknown key" in err and "mqtt.reconnect_max_s: must not be less than" in err
    good = tmp_path / "ok.toml"
    good.write_text("[smtp]\nport = 2525\n")
    assert relay_main(["check-config", "--config", str(good)]) == 0


def test_the_publisher_keeps_the_loops_order_and_outlives_a_bad_message(tmp_path: Path, monkeypatch: Any,
                                                                      caplog: Any) -> None:
    """The inference loop only hands results over; the publisher's batch publishes them in order, a result that
    cannot be built is said and skipped, and a publisher that far behind makes the loop publish them itself."""
    from edge import daemon as daemon_mod
    from edge.pipeline import Result
    from edge.sources.base import Frame

    monkeypatch.setattr(daemon_mod, "PUBLISH_BACKLOG", 4)
    cfg = edge_config.parse({
        "device": {"id": "unit1"}, "mqtt": {"host": "127.0.0.1", "port": 1, "result_qos": 1},
        "camera": {"source": str(part_folder(tmp_path / "parts", count=1))},
        "model": {"name": "mobilenetv2", "models_dir": str(REPO / "models")},
        "alerts": {"on_defect": False, "on_low_confidence": False, "on_unfamiliar": False},
        "state": {"dir": str(tmp_path / "state")}, "gradcam": {"enabled": False},
    })
    d = Daemon(cfg)
    image = np.zeros((64, 64, 3), np.uint8)
    pred = d.classifier.classify(image)
    frames = [Result(f"unit1-1-{i}", Frame(image, 1e9 + i, float(i), 1.0, i), pred) for i in range(3)]
    bad = Result("unit1-1-bad", Frame(image, 1e9, 0.0, 1.0, 9), pred, timings_ms={"x": float("nan")})
    for r in (frames[0], bad, frames[1]):
        d.on_result(r)
    assert not d.link._held, "handed over, not yet published"
    d.on_result(frames[2])  # the fourth waiting: the loop publishes the lot itself
    sent = [json.loads(m.payload)["frame_id"] for m in d.link._held]
    assert sent == ["unit1-1-0", "unit1-1-1", "unit1-1-2"], "in the loop's order, the bad one left out"
    assert [r.getMessage() for r in caplog.records if r.getMessage() == "publishing failed"] == ["publishing failed"]
    assert d.ring.get("unit1-1-2") is not None
    d.outbox.close()
