"""`make demo`: the product end to end on this machine, with embedded defaults, for a fixed time or until Ctrl-C.

Starts a local Mosquitto, a local SMTP sink that writes every mail to ``var/demo/mail/*.eml``, the relay, and the
edge daemon replaying a synthetic production-line video with the committed MobileNetV2 int8 model and automatic
Grad-CAM heatmaps on defect alerts. Shows a live view of what the unit reports, then stops everything it started
and prints where the mails (with snapshots and heatmaps attached) and the unit's database are.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var" / "demo"
SECONDS = float(os.environ.get("DEMO_SECONDS", "75"))


def ensure_mosquitto() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found:
        return found
    if os.geteuid() == 0:
        print("installing Debian's mosquitto ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "mosquitto"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return "/usr/sbin/mosquitto"
    sys.exit("the demo needs Mosquitto: sudo apt-get install mosquitto (or run make demo as root)")


class MailSink:
    """aiosmtpd handler: each mail to var/demo/mail/NNN.eml."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.count += 1
        (self.folder / f"{self.count:03d}.eml").write_bytes(envelope.content)
        return "250 OK"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def main() -> int:
    sys.path.insert(0, str(REPO))
    from aiosmtpd.controller import Controller

    from converter import synth
    from tests.broker import Collector, free_port, wait_port

    if VAR.exists():
        shutil.rmtree(VAR)
    for sub in ("mail", "broker", "edge", "relay"):
        (VAR / sub).mkdir(parents=True)
    video = VAR / "line.avi"
    print("writing a production-line video of synthetic parts ...", flush=True)
    truth = synth.write_video(video, parts=16, seed=7, size=256, fps=12, frames_per_part=24, defect_rate=0.4)
    mqtt_port, smtp_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    sink = MailSink(VAR / "mail")
    smtp = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        conf = write(VAR / "broker" / "mosquitto.conf", f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n"
                     f"persistence false\nuser {os.environ.get('USER') or 'root'}\n")
        procs.append(subprocess.Popen([ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_port(mqtt_port)
        smtp.start()
        relay_conf = write(VAR / "relay" / "relay.toml", f"""
metrics_interval_s = 5
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "defect-relay@demo.local"
[storm]
cooldown_s = 20
digest_window_s = 20
[delivery]
evidence_wait_s = 30
[state]
dir = "{VAR / 'relay'}"
[[routes]]
devices = ["*"]
recipients = ["line-lead@demo.local"]
""")
        edge_conf = write(VAR / "edge" / "edge.toml", f"""
[device]
id = "station1"
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
[camera]
source = "{video}"
fps = 12
loop = true
[model]
name = "mobilenetv2"
models_dir = "{REPO / 'models'}"
[alerts]
on_low_confidence = false
rearm_after_good_frames = 4
[gradcam]
auto_on = ["defect"]
method = "gradcam++"
[metrics]
interval_s = 2
[state]
dir = "{VAR / 'edge'}"
""")
        for module, cfg, log in (("relay.cli", relay_conf, "relay.log"), ("edge.cli", edge_conf, "edge.log")):
            with (VAR / log).open("wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", module, "run", "--config", str(cfg)],
                                              stdout=out, stderr=subprocess.STDOUT, env=env))
        watch = Collector(mqtt_port, "defect-edge/#", persistent=False)
        live(watch, sink, stop, truth)
        watch.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        smtp.stop()
    summary(sink)
    left = [p.pid for p in procs if p.poll() is None]
    if left:
        print(f"processes still running: {left}", file=sys.stderr)
        return 1
    return 0


def live(watch: Any, sink: MailSink, stop: threading.Event, truth: list[dict[str, object]]) -> None:
    recent: deque[str] = deque(maxlen=8)
    seen = 0
    end = time.monotonic() + SECONDS
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table
    except ImportError:
        Live = None  # noqa: N806 - a plain-text view instead
    state: dict[str, Any] = {"results": 0, "defective": 0, "alerts": 0, "heatmaps": 0, "fps": 0.0,
                             "p50": 0.0, "p95": 0.0}

    def update() -> None:
        nonlocal seen
        msgs = watch.messages[seen:]
        seen += len(msgs)
        for topic, payload, _ in msgs:
            kind = topic.split("/", 2)[2]
            if kind == "result":
                r = json.loads(payload)
                state["results"] += 1
                state["defective"] += r["defective"]
                recent.append(f"{r['frame_id'][-6:]}  {r['label']:<9} p={r['p_defect']:.3f}  "
                              f"{sum(r['timings_ms'].values()):5.1f} ms")
            elif kind == "alert":
                state["alerts"] += 1
            elif kind.startswith("gradcam/"):
                state["heatmaps"] += 1
            elif kind == "metrics":
                m = json.loads(payload)
                inf = m["latency_ms"].get("inference", {})
                state.update(fps=m["fps"], p50=inf.get("p50", 0.0), p95=inf.get("p95", 0.0))

    def table() -> Any:
        t = Table(title=f"defect-edge demo: station1 on a replayed line ({max(0, end - time.monotonic()):.0f} s left,"
                        " Ctrl-C to stop)")
        t.add_column("last results (frame, call, p_defect, latency)")
        t.add_column("unit", justify="right")
        rate = state["defective"] / state["results"] if state["results"] else 0.0
        stats = [f"fps {state['fps']:.1f}", f"inference p50 {state['p50']:.2f} ms", f"p95 {state['p95']:.2f} ms",
                 f"results {state['results']}", f"defect rate {rate:.0%}", f"alerts {state['alerts']}",
                 f"heatmaps {state['heatmaps']}", f"mails sent {sink.count}"]
        for i in range(max(len(recent), len(stats))):
            t.add_row(list(recent)[i] if i < len(recent) else "", stats[i] if i < len(stats) else "")
        return t

    if Live is not None and sys.stdout.isatty():
        with Live(table(), console=Console(), refresh_per_second=4) as view:
            while not stop.is_set() and time.monotonic() < end:
                update()
                view.update(table())
                stop.wait(0.25)
    else:
        while not stop.is_set() and time.monotonic() < end:
            update()
            print(f"{max(0, end - time.monotonic()):4.0f}s  results {state['results']}  fps {state['fps']:.1f}  "
                  f"alerts {state['alerts']}  heatmaps {state['heatmaps']}  mails {sink.count}", flush=True)
            stop.wait(5)
    update()
    defective_parts = sum(1 for t in truth if t["defect"])
    print(f"\nthe video holds {len(truth)} parts, {defective_parts} of them defective; the unit made "
          f"{state['results']} calls ({state['defective']} defective), {state['alerts']} alerts and "
          f"{state['heatmaps']} heatmaps")


def summary(sink: MailSink) -> None:
    mails = sorted((VAR / "mail").glob("*.eml"))
    print(f"\n{len(mails)} mails in {VAR / 'mail'}:")
    for path in mails:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        files = [p.get_filename() for p in msg.walk() if p.get_content_maintype() == "image"]
        print(f"  {path.name}: {msg['Subject']}  [{', '.join(files) or 'no attachment'}]")
    with_heat = sum(1 for p in mails if b".gradcam.jpg" in p.read_bytes())
    print(f"{with_heat} of them carry a Grad-CAM heatmap")
    print(f"the unit's database (results, events, heatmaps, outbox): {VAR / 'edge' / 'state.db'}")
    print(f"logs: {VAR / 'edge.log'}, {VAR / 'relay.log'}")


if __name__ == "__main__":
    sys.exit(main())
