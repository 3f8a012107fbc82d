"""The relay against real servers: the suite's Mosquitto, aiosmtpd (plain, and STARTTLS with auth), an HTTP server
standing in for a chat service's API, reached through Apprise.

Relays run as their own processes (`defect-relay run`), fed by an MQTT client that publishes what units publish.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import pytest

from converter import synth
from harness.broker import Broker, Collector
from harness.certs import make_certs
from harness.relay import RelayProc
from harness.smtp import Smtp

pytestmark = pytest.mark.processes

JPEG = cv2.imencode(".jpg", synth.render(2, 3, size=96, defect="crack").image)[1].tobytes()


class Hooks(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                srv.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def relays():  # type: ignore[no-untyped-def]
    started: list[RelayProc] = []
    yield started
    for r in started:
        r.kill()


def relay_config(tmp: Path, broker: Broker, server: Smtp, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "metrics_interval_s": 1,
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "smtp": {"host": "127.0.0.1", "port": server.port, "security": "none", "from": "relay@plant.example"},
        "delivery": {"evidence_wait_s": 2, "backoff_initial_s": 0.5, "backoff_max_s": 1},
        "storm": {"cooldown_s": 60, "digest_window_s": 60},
        "state": {"dir": str(tmp / "relay_state")},
        "routes": [{"devices": ["line3-*"], "kinds": ["defect", "low_confidence"],
                    "recipients": ["lead3@plant.example"]},
                   {"devices": ["*"], "kinds": ["camera_offline"], "recipients": ["maint@plant.example"]}],
    }
    for k, v in over.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    return cfg


def alert(device: str, n: int, kind: str = "defect") -> bytes:
    return json.dumps({"schema": 1, "device_id": device, "ts": "2026-11-26T04:00:00.000Z", "kind": kind,
                       "frame_id": f"{device}-1795660000-{n:09d}", "dedup_key": f"{device}:{kind}:{n}",
                       "label": "defective", "p_defect": 0.93, "confidence": 0.93, "threshold": 0.5,
                       "model": "mobilenetv2"}).encode()


def publisher(broker: Broker) -> Collector:
    return Collector(broker.port, "defect-relay/#", persistent=False)


def test_alert_with_evidence_is_one_mail_over_starttls_with_auth(tmp_path: Path, broker: Broker,
                                                                 relays: list[RelayProc]) -> None:
    certs = make_certs(tmp_path / "certs")
    smtp = Smtp(certs).start()
    hooks = Hooks()
    try:
        cfg = relay_config(tmp_path, broker, smtp, smtp={"security": "starttls", "ca_file": str(certs / "ca.crt"),
                                                         "username": "relay", "password": "s3cret",
                                                         "reply_to": "qa@plant.example"})
        cfg["routes"][0]["notify"] = [hooks.url.replace("http://", "json://")]  # Apprise's JSON POST
        r = RelayProc(tmp_path / "r1", cfg).start()
        relays.append(r)
        pub = publisher(broker)
        assert pub.wait(lambda m: any(t.endswith("/available") and p == b"online" for t, p, _ in m), 20), r.text()
        frame = "line3-a-1795660000-000000001"
        pub.publish("defect-edge/line3-a/alert", alert("line3-a", 1))
        pub.publish(f"defect-edge/line3-a/snapshot/{frame}", JPEG)
        pub.publish(f"defect-edge/line3-a/gradcam/{frame}", JPEG)
        assert smtp.sink.wait(1, 20), r.text()
        rcpt, msg = smtp.sink.mails[0]
        assert rcpt == ["lead3@plant.example"] and msg["To"] == "lead3@plant.example"
        assert msg["Reply-To"] == "qa@plant.example" and msg["From"] == "relay@plant.example"
        assert msg["Subject"] == "line3-a: defective part (sure, p 0.930)"
        inline = sorted((p.get_filename(), p["Content-ID"]) for p in msg.walk() if p.get_content_maintype() == "image")
        assert inline == [(f"{frame}.gradcam.jpg", f"<gradcam.{frame}@defect-relay>"),
                          (f"{frame}.snapshot.jpg", f"<snapshot.{frame}@defect-relay>")]
        html = msg.get_body(("html",)).get_content()
        assert f'src="cid:snapshot.{frame}@defect-relay"' in html and f'src="cid:gradcam.{frame}@defect-relay"' in html
        text = msg.get_body(("plain",)).get_content()
        assert f"frame {frame}" in text and "p(defect) = 0.930" in text
        deadline = time.monotonic() + 10
        while not hooks.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
        posted = hooks.bodies[0]  # through Apprise: its JSON, the part's picture attached
        assert posted["title"] == msg["Subject"] and "The unit called a part defective." in posted["message"]
        assert [a["filename"] for a in posted["attachments"]] == [f"{frame}.jpg"]
        assert base64.b64decode(posted["attachments"][0]["base64"]) == JPEG
        assert not smtp.sink.wait(2, 2), "one mail, not one per message"
        assert r.stop() == 0
    finally:
        smtp.stop()
        hooks.shutdown()
        hooks.server_close()


def test_storm_becomes_a_handful_of_digests(tmp_path: Path, broker: Broker, relays: list[RelayProc]) -> None:
    smtp = Smtp().start()
    try:
        cfg = relay_config(tmp_path, broker, smtp, storm={"cooldown_s": 3, "digest_window_s": 3},
                           delivery={"evidence_wait_s": 0})
        relays.append(r := RelayProc(tmp_path / "r", cfg).start())
        pub = publisher(broker)
        assert pub.wait(lambda m: any(p == b"online" for _, p, _ in m), 20), r.text()
        t = time.monotonic()
        for i in range(1000):
            pub.client.publish("defect-edge/line3-b/alert", alert("line3-b", i), qos=1)
            if i % 100 == 99:
                time.sleep(max(0.0, t + (i + 1) / 100 - time.monotonic()))  # 100 alerts/s for 10 s

        def counted() -> int:
            total = 0
            for _, m in smtp.sink.mails:
                body = next(p for p in m.walk() if p.get_content_type() == "text/plain").get_content()
                first = body.splitlines()[0]  # a digest opens with "N × defective part at <station>"
                total += int(first.split(" × ")[0]) if " × " in first else 1
            return total

        deadline = time.monotonic() + 40
        while counted() < 1000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counted() == 1000, "every alert is counted in one mail"
        assert len(smtp.sink.mails) <= 7, [m["Subject"] for _, m in smtp.sink.mails]
        assert " × defective part in " in smtp.sink.mails[-1][1]["Subject"]
    finally:
        smtp.stop()


def test_smtp_outage_and_relay_restart_lose_nothing_and_send_nothing_twice(tmp_path: Path, broker: Broker,
                                                                           relays: list[RelayProc]) -> None:
    smtp = Smtp()  # not started: the SMTP server is down
    cfg = relay_config(tmp_path, broker, smtp, delivery={"evidence_wait_s": 0})
    r = RelayProc(tmp_path / "r", cfg).start()
    relays.append(r)
    pub = publisher(broker)
    assert pub.wait(lambda m: any(p == b"online" for _, p, _ in m), 20), r.text()
    for i in range(6):  # six devices: no storm control, six mails
        pub.publish(f"defect-edge/line3-{i}/alert", alert(f"line3-{i}", i))
    deadline = time.monotonic() + 20
    while r.text().count("failed (") < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.text().count("failed (") >= 6, r.text()
    assert r.stop() == 0  # restarted mid-way, with every mail still pending
    smtp.start()
    try:
        relays.append(r2 := RelayProc(tmp_path / "r", cfg).start())
        assert smtp.sink.wait(6, 30), r2.text()
        assert not smtp.sink.wait(7, 3), "none twice"
        assert sorted(m["To"] for _, m in smtp.sink.mails) == ["lead3@plant.example"] * 6
        subjects = sorted(m["Subject"] for _, m in smtp.sink.mails)
        assert subjects == sorted(f"line3-{i}: defective part (sure, p 0.930)" for i in range(6))
    finally:
        smtp.stop()


def test_duplicates_hostile_and_oversize_are_counted_not_mailed(tmp_path: Path, broker: Broker,
                                                                relays: list[RelayProc]) -> None:
    smtp = Smtp().start()
    try:
        cfg = relay_config(tmp_path, broker, smtp, delivery={"evidence_wait_s": 0})
        relays.append(r := RelayProc(tmp_path / "r", cfg).start())
        pub = publisher(broker)
        assert pub.wait(lambda m: any(p == b"online" for _, p, _ in m), 20), r.text()
        pub.publish("defect-edge/line3-a/alert", alert("line3-a", 1))
        pub.publish("defect-edge/line3-a/alert", alert("line3-a", 1))  # QoS 1 delivered twice
        evil = json.loads(alert("line3-a", 2))
        # Mosquitto itself drops a client that publishes a topic with CR/LF; the relay checks ids all the same.
        pub.publish("defect-edge/line3 <b>Bcc: all@x/alert", json.dumps({**evil, "device_id": "line3 <b>Bcc: all@x"}))
        pub.publish("defect-edge/line3-a/alert", json.dumps({**evil, "kind": "defect\r\nBcc: all@x"}))
        pub.publish("defect-edge/line3-a/alert", json.dumps({**evil, "dedup_key": "k\r\nBcc: all@x"}))
        pub.publish("defect-edge/line3-a/alert", json.dumps({**evil, "device_id": "line3-b"}))
        pub.publish("defect-edge/line3-a/alert", json.dumps({**evil, "note": "x" * 20_000}))
        pub.publish("defect-edge/line3-a/snapshot/..%2F..%2Fetc", JPEG)
        pub.publish("defect-edge/line3-a/alert", b"\xff\xfe not json")

        def counters() -> dict[str, int]:
            status = [json.loads(p) for t, p, _ in pub.messages if t.endswith("/metrics")]
            return status[-1]["counters"] if status else {}

        assert pub.wait(lambda m: sum(v for k, v in counters().items() if k.startswith("rejected_")) >= 7, 20), \
            counters()
        c = counters()
        assert c["alerts_accepted"] == 1 and c["alerts_duplicate"] == 1
        assert c["rejected_oversize"] == 1 and c["rejected_device_mismatch"] == 1 and c["rejected_not_json"] == 1
        assert c["rejected_bad_field"] == 2 and c["rejected_bad_device_id"] == 1 and c["rejected_bad_frame_id"] == 1
        assert smtp.sink.wait(1, 10) and not smtp.sink.wait(2, 3)
        assert "Bcc" not in str(smtp.sink.mails[0][1])
    finally:
        smtp.stop()


def test_two_relays_share_the_fleet_and_mail_each_alert_once(tmp_path: Path, broker: Broker,
                                                             relays: list[RelayProc]) -> None:
    smtp = Smtp().start()
    try:
        pub = publisher(broker)
        for n in (1, 2):
            cfg = relay_config(tmp_path / f"r{n}", broker, smtp, id=f"relay{n}", delivery={"evidence_wait_s": 0})
            relays.append(RelayProc(tmp_path / f"r{n}", cfg).start())
        assert pub.wait(lambda m: sum(1 for t, p, _ in m if t.endswith("/available") and p == b"online") >= 2, 20)
        for i in range(20):
            pub.publish(f"defect-edge/line3-{i}/alert", alert(f"line3-{i}", i))
        assert smtp.sink.wait(20, 30)
        assert not smtp.sink.wait(21, 3)
        assert len({m["Subject"] for _, m in smtp.sink.mails}) == 20
        handled = [int(json.loads([p for t, p, _ in pub.messages if t == f"defect-relay/relay{n}/metrics"][-1])
                       ["counters"].get("alerts_accepted", 0)) for n in (1, 2)]
        assert sum(handled) == 20  # each alert went to one relay of the group
    finally:
        smtp.stop()
