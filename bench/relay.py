"""How fast the relay takes alerts in, and how long an alert takes to become a mail, against real local servers.

1. accepted_alerts_per_s: a burst of alerts published to Mosquitto, accepted into the relay's SQLite queue
   (validated, deduplicated, stored before the MQTT ack), per second.
2. mail_latency_p50_ms / p95: from publishing an alert to its mail arriving at a local aiosmtpd, one alert every
   100 ms (no storm control in the way: each alert from its own device).

Run: ``.venv/bin/python -m bench.relay [--burst 2000]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.metrics import percentile
from harness import REPO
from harness.broker import Broker, Collector
from harness.daemon import write_toml
from harness.smtp import Smtp


def alert(device: str, n: int) -> bytes:
    return json.dumps({"schema": 1, "device_id": device, "ts": "2026-11-26T04:00:00.000Z", "kind": "defect",
                       "frame_id": f"{device}-1-{n:09d}", "dedup_key": f"{device}:defect:{n}", "label": "defective",
                       "p_defect": 0.9}).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--latency-alerts", type=int, default=60)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = Broker(tmp / "broker").start()
        smtp = Smtp().start()
        sink = smtp.sink
        cfg = write_toml(tmp / "relay.toml", {
            "metrics_interval_s": 5, "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
            "delivery": {"evidence_wait_s": 0}, "storm": {"cooldown_s": 0}, "state": {"dir": str(tmp / "state")}})
        with cfg.open("a") as f:
            f.write('[[routes]]\ndevices = ["*"]\nrecipients = ["qa@plant.example"]\n')
        relay = subprocess.Popen([sys.executable, "-m", "relay.cli", "run", "--config", str(cfg)],
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        pub = Collector(broker.port, "defect-relay/#", persistent=False)
        try:
            pub.wait(lambda m: any(p == b"online" for _, p, _ in m), 30)
            db = sqlite3.connect(tmp / "state" / "relay.db", timeout=30)
            # 1. acceptance rate
            t0 = time.time()
            for i in range(a.burst):
                pub.client.publish("defect-edge/burst/alert", alert("burst", i), qos=1)
            while db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] < a.burst:
                time.sleep(0.01)
            accepted = a.burst / (time.time() - t0)
            while not sink.mails or db.execute("SELECT COUNT(*) FROM outgoing WHERE state = 'pending'"
                                                      ).fetchone()[0]:
                time.sleep(0.1)  # let the burst's mails go before timing single alerts
            # 2. publish -> mail latency
            sent: dict[str, float] = {}
            for i in range(a.latency_alerts):
                device = f"lat{i}"
                sent[f"[defect] {device}: defective (p=0.900)"] = time.time()
                pub.publish(f"defect-edge/{device}/alert", alert(device, i))
                time.sleep(0.1)
            deadline = time.time() + 60
            while not set(sent) <= set(sink.arrival_by_subject()) and time.time() < deadline:
                time.sleep(0.05)
            arrived = sink.arrival_by_subject()
            lat = sorted((arrived[s] - t) * 1e3 for s, t in sent.items() if s in arrived)
            db.close()
        finally:
            relay.terminate()
            relay.wait(20)
            pub.close()
            smtp.stop()
            broker.stop()
    p50, p95 = percentile(lat, 50), percentile(lat, 95)
    print(f"{'measure':<52}{'value':>10}")
    print(f"{f'alerts accepted into the queue ({a.burst} burst), per s':<52}{accepted:>10.0f}")
    print(f"{f'publish -> SMTP delivery p50 ms ({len(lat)} alerts)':<52}{p50:>10.1f}")
    print(f"{'publish -> SMTP delivery p95 ms':<52}{p95:>10.1f}")
    print(json.dumps({"accepted_alerts_per_s": round(accepted, 1), "mail_latency_p50_ms": round(p50, 1),
                      "mail_latency_p95_ms": round(p95, 1)}))


if __name__ == "__main__":
    main()
