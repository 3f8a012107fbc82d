"""The central broker's configuration (systemd/mosquitto), run for real: TLS, passwords, ACLs, the fleet through it."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from harness import REPO
from harness.broker import Broker
from harness.daemon import ALERT_STREAM, Daemon, config
from harness.relay import RelayProc
from harness.smtp import Smtp

pytestmark = pytest.mark.processes

CONF = REPO / "systemd" / "mosquitto"
USERS = ("unitA", "unitB", "relay", "operator", "dashboard", "console")


@pytest.fixture
def secure(tmp_path: Path):  # type: ignore[no-untyped-def]
    cred = tmp_path / "cred"
    subprocess.run([str(CONF / "make-credentials.sh"), "ca", str(cred), "127.0.0.1"], check=True, capture_output=True)
    for u in USERS:
        subprocess.run([str(CONF / "make-credentials.sh"), "user", str(cred), u], check=True, capture_output=True)
    (cred / "acl").write_text((CONF / "acl").read_text())
    broker = Broker(tmp_path / "broker", extra="")
    text = (CONF / "defect-edge.conf").read_text().replace("/etc/mosquitto/defect-edge", str(cred))
    text = text.replace("listener 8883", f"listener {broker.port} 127.0.0.1")
    broker.conf.write_text(broker.conf.read_text().replace(f"listener {broker.port} 127.0.0.1\n", "") + text)
    broker.start()
    yield broker, cred
    broker.stop()


class Client:
    """A TLS client that records what it receives and what the broker answered."""

    def __init__(self, port: int, cred: Path, user: str | None, *, ca: Path | None = None):
        self.got: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.suback: list[Any] = []
        self.error = ""
        self.connected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        self.c.tls_set(ca_certs=str(ca or cred / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        if user:
            self.c.username_pw_set(user, (cred / f"{user}.password").read_text().strip())
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.extend(codes)
        with warnings.catch_warnings():
            # paho leaves the socket of a failed TLS handshake unclosed; it is freed with the exception
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                self.c.connect("127.0.0.1", port)
            except (ssl.SSLError, OSError) as e:
                self.error = str(e)
        if self.error:
            return
        self.c.loop_start()
        self.connected.wait(5)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = rc
        self.connected.set()

    def sub(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        n = len(self.suback)
        while len(self.suback) == n and time.monotonic() < deadline:
            time.sleep(0.02)

    def pub(self, topic: str, payload: bytes = b"{}") -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
        sock = self.c.socket()
        if sock is not None:  # a refused client's socket is left to us
            sock.close()


def test_anonymous_and_wrong_ca_are_refused(secure: tuple[Broker, Path], tmp_path: Path) -> None:
    broker, cred = secure
    anon = Client(broker.port, cred, None)
    anon.close()
    assert anon.connack is not None and anon.connack.is_failure  # "Not authorized"
    other = tmp_path / "other"
    subprocess.run([str(CONF / "make-credentials.sh"), "ca", str(other), "127.0.0.1"], check=True,
                   capture_output=True)
    wrong = Client(broker.port, cred, "unitA", ca=other / "ca.crt")
    wrong.close()
    assert "certificate verify failed" in wrong.error
    ok = Client(broker.port, cred, "unitA")
    assert ok.connack is not None and not ok.connack.is_failure
    ok.close()


def test_units_are_confined_to_their_own_topics(secure: tuple[Broker, Path]) -> None:
    broker, cred = secure
    a, b, dash, op, console = (Client(broker.port, cred, u)
                               for u in ("unitA", "unitB", "dashboard", "operator", "console"))
    try:
        dash.sub("defect-edge/#")
        console.sub("defect-edge/+/release/get")
        b.sub("defect-console/releases/unitB/part")
        a.sub("defect-console/releases/+/part")  # granted, and withheld: another unit's release files
        a.pub("defect-edge/unitA/release/get", b"A asks")
        console.pub("defect-console/releases/unitB/part", b"for B")
        op.pub("defect-console/releases/unitB/part", b"an operator posing as the console")
        a.sub("defect-edge/unitB/cmd/+")  # mosquitto 2.0 grants it, then withholds every message A may not read
        b.sub("defect-edge/unitB/cmd/+")
        assert not b.suback[-1].is_failure
        a.pub("defect-edge/unitA/alert", b"from A")
        a.pub("defect-edge/unitB/alert", b"A pretending to be B")
        op.pub("defect-edge/unitB/cmd/threshold", b'{"threshold": 0.4}')
        dash.pub("defect-edge/unitB/cmd/threshold", b'{"threshold": 0.9}')  # dashboards only read
        time.sleep(1.0)  # let anything that would leak arrive (the assertions are about absence)
        assert ("defect-edge/unitA/alert", b"from A") in dash.got
        assert not any(p == b"A pretending to be B" for _, p in dash.got)
        assert sorted(b.got) == [("defect-console/releases/unitB/part", b"for B"),
                                 ("defect-edge/unitB/cmd/threshold", b'{"threshold": 0.4}')]
        assert not a.got
        assert console.got == [("defect-edge/unitA/release/get", b"A asks")]
    finally:
        for c in (a, b, dash, op, console):
            c.close()


def test_the_unit_and_the_relay_work_through_it(secure: tuple[Broker, Path], tmp_path: Path, models_dir: Path,
                                                daemons: list[Daemon]) -> None:
    broker, cred = secure
    tls = {"ca_file": str(cred / "ca.crt")}
    cfg = config(tmp_path, broker.port, models_dir, **ALERT_STREAM)
    cfg["mqtt"].update(username="unitA", password_file=str(cred / "unitA.password"), tls=tls)
    cfg["device"]["id"] = "unitA"
    smtp = Smtp().start()
    try:
        relay = RelayProc(tmp_path / "relay", {
            "metrics_interval_s": 1,
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": "relay",
                     "password_file": str(cred / "relay.password"), "tls": tls},
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
            "delivery": {"evidence_wait_s": 1}, "state": {"dir": str(tmp_path / "relay_state")},
            "routes": [{"devices": ["*"], "recipients": ["qa@plant.example"]}]}).start()
        dash = Client(broker.port, cred, "dashboard")
        dash.sub("defect-edge/unitA/result")
        d = Daemon(tmp_path, cfg).start()
        daemons.append(d)
        assert smtp.sink.wait(1, 60), relay.text()[-2000:] + d.log()[-2000:]
        assert dash.got and json.loads(dash.got[0][1])["device_id"] == "unitA"
        assert "not authorized" not in d.log().lower()
        d.stop()
        assert relay.stop() == 0
        dash.close()
    finally:
        smtp.stop()
