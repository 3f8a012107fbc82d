"""The edge daemon against a real Mosquitto: the MQTT contract, commands, systemd readiness, and reliability.

The daemon runs as its own process, as under systemd, and is driven as a user would drive it: over MQTT and signals.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness.broker import Broker, Collector
from harness.certs import make_certs
from harness.daemon import ALERT_STREAM, BASE, Daemon, config

pytestmark = pytest.mark.processes

def start(daemons: list[Daemon], tmp: Path, cfg: dict[str, dict[str, Any]], **kw: Any) -> Daemon:
    d = Daemon(tmp, cfg, **kw).start()
    daemons.append(d)
    return d


def payloads(c: Collector, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in c.on(suffix)]


def test_contract_topics_and_payloads(tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/#")
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir, **ALERT_STREAM))
    assert c.wait(lambda m: any(t.endswith("/metrics") for t, _, _ in m) and
                  any("/snapshot/" in t for t, _, _ in m), 30), d.log()
    assert c.on("/available")[0] == b"online"
    assert c.wait(lambda m: any(json.loads(p)["camera"]["state"] == "streaming" for t, p, _ in m
                                if t.endswith("/status")), 10), "the retained status follows the camera"
    status = payloads(c, "/status")[0]
    assert status["model"]["name"] == "tiny_f32" and status["camera"]["source"].startswith("folder ")
    assert status["schema"] == 1 and status["ts"].endswith("Z") and status["software_version"]
    result = payloads(c, "/result")[0]
    assert set(result) >= {"schema", "device_id", "ts", "frame_id", "label", "p_defect", "confidence", "threshold",
                           "model", "timings_ms"}
    assert set(result["timings_ms"]) == {"capture", "queue", "preprocess", "inference", "postprocess"}
    assert isinstance(result["p_defect"], float) and result["frame_id"].startswith("unit1-")
    ids = [r["frame_id"] for r in payloads(c, "/result")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "QoS 0 results go in batches, in order, once"
    alert = payloads(c, "/alert")[0]
    assert alert["kind"] == "defect" and alert["dedup_key"] == f"unit1:defect:{alert['frame_id']}"
    snap_topics = [t for t, _, _ in c.messages if "/snapshot/" in t]
    assert snap_topics[0] == f"{BASE}/snapshot/{alert['frame_id']}"
    assert c.on(f"/snapshot/{alert['frame_id']}")[0][:2] == b"\xff\xd8"  # JPEG
    metrics = payloads(c, "/metrics")[0]
    assert metrics["fps"] > 0 and metrics["latency_ms"]["inference"]["p50"] > 0
    assert set(metrics) >= {"dropped_frames", "load", "rss_mb", "outbox", "mqtt", "uptime_s", "cpu_temp_c"}
    rc, took = d.stop()
    assert rc == 0 and took < 5
    assert c.wait(lambda m: m[-1][0] == f"{BASE}/available" and m[-1][1] == b"offline", 5)
    kinds = [k for (k,) in d.query("SELECT kind FROM events ORDER BY id")]
    assert kinds[0] == "start" and kinds[-1] == "stop" and "alert" in kinds
    assert d.query("SELECT COUNT(*) FROM results")[0][0] >= len(payloads(c, "/result")) - 5


def test_broker_outage_loses_no_alert(tmp_path: Path, broker: Broker, models_dir: Path,
                                      daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/alert", f"{BASE}/metrics")
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir, **ALERT_STREAM))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/alert")]) >= 3, 30), d.log()
    broker.stop()
    outage_started = time.time()
    time.sleep(10)  # the outage itself (the scenario asks for 10-30 s); alerts pile up in the outbox
    assert d.alive()
    queued = d.query("SELECT COUNT(*) FROM outbox WHERE kind = 'alert'")[0][0]
    assert queued >= 10, "alerts raised during the outage wait in the outbox"
    broker.start()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM outbox WHERE kind = 'alert' AND created < ?",
                                 outage_started + 10)[0][0] == 0, 30, "the outbox to drain")
    assert c.wait(lambda m: any(json.loads(p)["mqtt"]["dropped_qos0"] > 0 for t, p, _ in m if t.endswith("/metrics")),
                  10), "QoS 0 results lost in the outage are counted"
    rc, _ = d.stop()
    assert rc == 0
    log = d.log()
    assert log.count("cannot connect") == 1 and "Client is not connected" not in log, "an outage is one line"
    raised = [json.loads(x)["frame_id"] for (x,) in d.query("SELECT detail FROM events WHERE kind = 'alert' "
                                                             "ORDER BY id")]
    assert c.wait(lambda m: {json.loads(p)["frame_id"] for t, p, _ in m if t.endswith("/alert")} >= set(raised), 20)
    seen: dict[str, dict[str, Any]] = {}
    for a in payloads(c, "/alert"):
        seen.setdefault(a["dedup_key"], a)  # QoS 1 may deliver twice: dedup by key, keep the first
    arrived = [a["frame_id"] for a in seen.values()]
    assert arrived == raised, "every alert, once, in order"
    during = [a for a in seen.values() if outage_started + 1 < _epoch(a["ts"]) < outage_started + 9]
    assert len(during) >= 10, "alerts from the outage keep their original timestamps"


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=__import__("datetime").timezone.utc
                                                                  ).timestamp()


def test_sigkill_with_alerts_in_the_outbox(tmp_path: Path, broker: Broker, models_dir: Path,
                                           daemons: list[Daemon]) -> None:
    cfg = config(tmp_path, broker.port, models_dir, **ALERT_STREAM)
    c = Collector(broker.port, f"{BASE}/alert")
    d = start(daemons, tmp_path, cfg)
    assert c.wait(lambda m: len(m) >= 2, 30), d.log()
    broker.stop()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM outbox WHERE kind = 'alert'")[0][0] >= 5, 30,
                 "alerts to queue while the broker is away")
    d.signal(signal.SIGKILL)
    d.proc.wait(10)  # type: ignore[union-attr]
    stranded = {json.loads(p)["dedup_key"] for (p,) in d.query("SELECT payload FROM outbox WHERE kind = 'alert'")}
    assert len(stranded) >= 5
    broker.start()
    d2 = start(daemons, tmp_path, cfg)
    assert c.wait(lambda m: stranded <= {json.loads(p)["dedup_key"] for _, p, _ in m}, 30), d2.log()
    d2.stop()


def hostile_commands(rng: random.Random, frame_id_prefix: str) -> list[tuple[str, bytes, bool]]:
    """500 malformed or hostile commands: (command name, payload, retained)."""
    out: list[tuple[str, bytes, bool]] = []
    names = ["model", "threshold", "trigger", "feedback", "gradcam"]
    for _ in range(100):
        out.append((rng.choice(names), rng.randbytes(rng.randint(0, 300)), False))
    wrong_types = [b"[]", b"5", b'"text"', b"null", b'{"threshold": "high"}', b'{"threshold": [0.5]}',
                   b'{"name": 5}', b'{"frame_id": 12, "label": "good"}', b'{"low_confidence_band": [0.9]}',
                   b'{"threshold": true}', b'{"label": "good"}', b'{"frame_id": "x", "label": "maybe"}',
                   b'{"threshold": 0.5, "extra": 1}', b'{"name": null}', b"{", b'{"threshold": NaN}']
    for i in range(100):
        out.append((names[i % 5], wrong_types[i % len(wrong_types)], False))
    for _ in range(20):
        out.append((rng.choice(names), b'{"note": "' + b"x" * 100_000 + b'"}', False))
    for _ in range(100):
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_") for _ in range(rng.randint(1, 60)))
        out.append((name if name not in names else name + "_x", b"{}", False))
    for v in [-1, 2, 1.0000001, -0.0001, 1e308, 10**400][:6] * 9:
        out.append(("threshold", json.dumps({"threshold": v}).encode() if v != 10**400 else b'{"threshold": 1e400}',
                    False))
    for i in range(50):
        out.append(("feedback", json.dumps({"frame_id": f"{frame_id_prefix}{i:09d}x", "label": "good"}).encode(),
                    False))
    traversal = ["../../etc/passwd", "/etc/passwd", "..", "a/b", "models/../tiny", "%2e%2e%2f", "tiny\x00",
                 ".hidden", "tiny.json", "x" * 300]
    for i in range(50):
        out.append(("model", json.dumps({"name": traversal[i % len(traversal)]}).encode(), False))
    for _ in range(26):
        out.append(("threshold", b'{"threshold": 0.01}', True))  # retained: must be ignored, not applied
    assert len(out) == 500
    return out


def test_500_hostile_commands(tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/cmd/+/reply", f"{BASE}/result", f"{BASE}/status")
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir))
    assert c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 30), d.log()
    cmds = hostile_commands(random.Random(4), "unit1-")
    for name, payload, retain in cmds:
        c.publish(f"{BASE}/cmd/{name}", payload, retain=retain)
    expected = sum(1 for *_, retain in cmds if not retain)
    assert c.wait(lambda m: sum(1 for t, _, _ in m if t.endswith("/reply")) >= expected, 90), d.log()[-2000:]
    replies = [json.loads(p) for t, p, _ in c.messages if t.endswith("/reply")]
    assert len(replies) == expected and not any(r["ok"] for r in replies)
    assert all(r["error"] and len(r["error"]) <= 500 for r in replies)
    assert any("unknown command" in r["error"] for r in replies)
    assert any("unknown model" in r["error"] for r in replies)
    assert any("less than or equal to 1" in r["error"] for r in replies)
    assert any("is unknown or no longer buffered" in r["error"] for r in replies)
    assert any("exceeds 16384" in r["error"] for r in replies)
    assert len(c.on("/cmd/unknown/reply")) == 100
    n = len(c.on("/result"))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/result")]) >= n + 20, 30), "still classifying"
    assert json.loads(c.on("/status")[-1])["model"]["threshold"] == 0.5  # nothing hostile was applied
    # The 50 path-traversal names: refused as unknown models (45), or as too long (the 5 of 300 characters).
    assert sum("unknown model" in r["error"] for r in replies if r["command"] == "model") >= 45
    assert d.alive()
    d.stop()
    retained = [t for t, _, r in c.messages if r and "/cmd/" in t]
    assert not retained


def test_commands_do_what_they_say(tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/#")
    # tiny's int8 conversion was forced through (--min-agreement 0): the floor is test_verify.py's concern
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir, model={"min_agreement": 0.0}))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/result")]) >= 3, 30), d.log()

    def command(name: str, body: dict[str, Any]) -> dict[str, Any]:
        before = len(c.on(f"/cmd/{name}/reply"))
        c.publish(f"{BASE}/cmd/{name}", json.dumps(body))
        assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith(f"/cmd/{name}/reply")]) > before, 15)
        return json.loads(c.on(f"/cmd/{name}/reply")[before])

    r = command("model", {"name": "tiny", "request_id": "r1"})
    assert r["ok"] and r["result"]["model"] == "tiny" and r["request_id"] == "r1"
    assert c.wait(lambda m: json.loads([p for t, p, _ in m if t.endswith("/result")][-1])["model"]["name"] == "tiny",
                  15)
    r = command("model", {"name": "nope"})
    assert not r["ok"] and "keeping tiny" in r["error"] and "known: tiny, tiny_f32" in r["error"]
    r = command("threshold", {"threshold": 0.25, "low_confidence_band": [0.2, 0.3]})
    assert r["ok"] and r["result"] == {"threshold": 0.25, "low_confidence_band": [0.2, 0.3],
                                       "from": {"threshold": "command", "low_confidence_band": "command"}}
    assert json.loads(c.on("/status")[-1])["model"]["threshold"] == 0.25
    r = command("model", {"name": "tiny_f32"})  # a model swap keeps the commanded policy (it used to drop it)
    status = json.loads(c.on("/status")[-1])
    assert r["ok"] and status["model"]["threshold"] == 0.25, status
    assert status["decision"]["threshold"]["from"] == "command" and status["decision"]["threshold"]["set_at"]
    assert not command("threshold", {"threshold": 0.25, "reset": True})["ok"], "reset comes alone"
    frame_id = json.loads(c.on("/result")[-1])["frame_id"]
    r = command("feedback", {"frame_id": frame_id, "label": "defective", "note": "crack at 3 o'clock"})
    assert r["ok"] and r["result"]["frame_id"] == frame_id
    r = command("trigger", {})
    assert not r["ok"] and "classifies continuously" in r["error"]
    r = command("gradcam", {"frame_id": frame_id})
    assert r["ok"] and r["result"]["queued"] and r["result"]["frame_id"] == frame_id  # tests/test_gradcam.py: the rest

    # MQTT v5 request/response: the reply also goes to the response topic, with the correlation data.
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "dashboards/replies/42"
    props.CorrelationData = b"corr-7"
    v5 = __import__("paho.mqtt.client", fromlist=["Client"])
    got: list[tuple[str, bytes]] = []
    cli = v5.Client(v5.CallbackAPIVersion.VERSION2, protocol=v5.MQTTv5)
    cli.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.properties.CorrelationData))
    subscribed = threading.Event()
    cli.on_subscribe = lambda *_: subscribed.set()
    cli.connect("127.0.0.1", broker.port)
    cli.subscribe("dashboards/replies/#", qos=1)
    cli.loop_start()
    assert subscribed.wait(10)
    cli.publish(f"{BASE}/cmd/threshold", json.dumps({"threshold": 0.5}), qos=1, properties=props)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    cli.loop_stop()
    assert got == [("dashboards/replies/42", b"corr-7")]

    rc, _ = d.stop()
    assert rc == 0
    out = tmp_path / "retrain"
    proc = subprocess.run([str(Path(__import__("sys").executable).parent / "defect-edge"), "export-feedback",
                           str(out), "--config", str(d.config_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (out / "defect").iterdir()] == [f"{frame_id}.jpg"]
    kinds = [k for (k,) in d.query("SELECT kind FROM events")]
    assert "model" in kinds and "threshold" in kinds


def test_on_demand_trigger(tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/result", f"{BASE}/cmd/trigger/reply")
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir, inference={"mode": "on_demand"}))
    assert c.wait(lambda m: False, 2) is False and not c.on("/result"), "nothing without a trigger"
    for _ in range(3):  # one part, triggered three times at once: debounced (max_frame_delay_ms, 100 ms)
        c.publish(f"{BASE}/cmd/trigger", b"{}")
    assert c.wait(lambda m: len(c.on("/reply")) == 3, 15), d.log()
    replies = [json.loads(p) for p in c.on("/reply")]
    assert [r["result"]["duplicate"] for r in replies] == [False, True, True], replies
    assert len({r["result"]["part_id"] for r in replies}) == 1
    time.sleep(0.2)  # past the debounce interval: the next trigger is the next part
    c.publish(f"{BASE}/cmd/trigger", b"{}")
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/result")]) == 2, 15), d.log()
    d.stop()


def test_systemd_readiness_watchdog_and_stop(tmp_path: Path, broker: Broker, models_dir: Path,
                                             daemons: list[Daemon]) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    request_cleanup = sock.close
    sock.bind(str(sock_path))
    sock.settimeout(20)
    c = Collector(broker.port, f"{BASE}/available")
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir),
              env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    got: list[str] = []
    while not any("READY=1" in g for g in got) or not any("WATCHDOG=1" in g for g in got):
        got.append(sock.recv(4096).decode())
    ready = next(g for g in got if "READY=1" in g)
    assert "STATUS=model tiny_f32" in ready
    while not any("fps" in g for g in got if g.startswith("STATUS=")):
        got.append(sock.recv(4096).decode())
    rc, took = d.stop()
    assert rc == 0 and took < 5
    sock.settimeout(1)
    rest = []
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    request_cleanup()
    assert any("STOPPING=1" in g for g in rest)
    assert c.wait(lambda m: m[-1][1] == b"offline", 5)


def test_refused_credentials_are_one_clear_line_and_retried(tmp_path: Path, models_dir: Path,
                                                            daemons: list[Daemon]) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "unit1", "right"], check=True, capture_output=True)
    b = Broker(tmp_path / "broker", extra=f"allow_anonymous false\npassword_file {pw}\n").start()
    try:
        d = start(daemons, tmp_path, config(tmp_path, b.port, models_dir,
                                            mqtt={"username": "unit1", "password": "wrong"}))
        d.wait_until(lambda: "broker refused the connection" in d.log(), 20, "the refusal to be logged")
        d.wait_until(lambda: b.log().count("New connection from") >= 3, 30, "three refused attempts")
        assert d.alive()
        lines = [x for x in d.log().splitlines() if "broker refused" in x]
        assert 1 <= len(lines) <= 3, lines  # said once (repeats are not re-logged), no tight loop
        # mosquitto 2.0 answers a wrong password with "Not authorized" (MQTT 5 reason code 135)
        assert re.search(r"broker refused the connection: (Not authorized|Bad user name or password); retrying "
                         r"with backoff$", lines[0]), lines[0]
        assert "Traceback" not in d.log()
        d.wait_until(lambda: d.query("SELECT COUNT(*) FROM results")[0][0] > 0, 30, "results kept while refused")
        rc, _ = d.stop()
        assert rc == 0
    finally:
        b.stop()


def test_wrong_tls_ca_is_one_clear_line_and_retried(tmp_path: Path, models_dir: Path,
                                                   daemons: list[Daemon]) -> None:
    certs = make_certs(tmp_path / "certs", other_cas=("other",))
    b = Broker(tmp_path / "broker", extra=f"allow_anonymous true\ncafile {certs}/ca.crt\ncertfile {certs}/server.crt\n"
                                          f"keyfile {certs}/server.key\n").start()
    try:
        d = start(daemons, tmp_path, config(tmp_path, b.port, models_dir,
                                            mqtt={"tls": {"ca_file": str(certs / "other.crt")}}))
        d.wait_until(lambda: "certificate verify failed" in d.log(), 20, "the TLS failure to be logged")
        # mosquitto logs a failed handshake in one of two forms, depending on whether it failed while accepting
        # ("Client connection from ... failed: ...unknown ca") or after ("OpenSSL Error[0]: ...unknown ca")
        d.wait_until(lambda: b.log().count("alert unknown ca") >= 3, 30, "three refused handshakes")
        assert d.alive() and "Traceback" not in d.log()
        lines = [x for x in d.log().splitlines() if "certificate verify failed" in x]
        assert 1 <= len(lines) <= 3, lines
        d.stop()
        # and with the right CA it works
        d2 = start(daemons, tmp_path / "ok" if (tmp_path / "ok").mkdir() is None else tmp_path,
                   config(tmp_path / "ok", b.port, models_dir, mqtt={"tls": {"ca_file": str(certs / "ca.crt")}}))
        d2.wait_until(lambda: "mqtt connected" in d2.log(), 20, "a TLS connection")
        d2.stop()
    finally:
        b.stop()


def test_home_assistant_discovery(tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    c = Collector(broker.port, "homeassistant/#")
    d = start(daemons, tmp_path, config(tmp_path, broker.port, models_dir, homeassistant={"enabled": True}))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/config")]) == 6, 20), d.log()
    cfgs = {t: json.loads(p) for t, p, _ in c.messages if t.endswith("/config")}
    p_defect = cfgs["homeassistant/sensor/defect-edge-unit1/p_defect/config"]
    assert p_defect["state_topic"] == f"{BASE}/result" and p_defect["availability_topic"] == f"{BASE}/available"
    assert p_defect["unique_id"] == "defect-edge-unit1-p_defect"
    c.publish("homeassistant/status", b"online")  # Home Assistant restarted
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/config")]) >= 12, 10)
    d.stop()
