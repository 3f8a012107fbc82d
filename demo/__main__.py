"""`make demo`: the product end to end on this machine, with embedded defaults, for a fixed time or until Ctrl-C.

Starts a local Mosquitto (installing Debian's package when run as root; where neither is possible, amqtt, an embedded
Python broker, saying so), a local SMTP sink that writes every mail to ``var/mail/*.eml``, the relay, and the edge
daemon replaying a synthetic production-line video with the committed MobileNetV2 model and automatic Grad-CAM
heatmaps on defect alerts, and the line console (its URL and a generated admin password are printed first: open it
in a browser while the demo runs). Shows a live view of what the unit reports, then stops everything it started and
prints where the mails (with snapshots and heatmaps attached) and the unit's database are.

``DEMO_SECONDS`` (75) sets how long it runs, ``DEMO_DIR`` (``var/``) where it writes, ``DEMO_BROKER`` (``auto``,
``mosquitto`` or ``amqtt``) which broker it starts, and ``DEMO_CONSOLE_PORT`` (8080, or a free one when taken) where
the console listens.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("DEMO_DIR") or REPO / "var").resolve()
RUN = VAR / "demo"  # broker, unit and relay state, the video, the logs
MAIL = VAR / "mail"
SEEN = RUN / "seen"  # the snapshots (the crop each alerted part was judged on) and whole frames with its box
SECONDS = float(os.environ.get("DEMO_SECONDS", "75"))
BROKER = os.environ.get("DEMO_BROKER", "auto")


def find_mosquitto() -> str | None:
    """Mosquitto's path; Debian's package is installed first when running as root and it is absent."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("installing Debian's mosquitto ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run(["apt-get", "update", "-qq"], env=env).returncode == 0 and subprocess.run(
        ["apt-get", "install", "-y", "-qq", "mosquitto"], env=env).returncode == 0
    return "/usr/sbin/mosquitto" if ok else None


def start_broker(port: int, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A broker on 127.0.0.1:port and the MQTT protocol the unit and relay must speak to it.

    amqtt speaks only MQTT 3.1.1, so with it the relay subscribes without a shared subscription (one relay here).
    """
    exe = find_mosquitto() if BROKER in ("auto", "mosquitto") else None
    if exe:
        conf = write(folder / "mosquitto.conf", f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                     f"persistence false\nuser {os.environ.get('USER') or 'root'}\n")
        return subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), "5"
    if BROKER == "mosquitto":
        sys.exit("DEMO_BROKER=mosquitto, but Mosquitto is not installed: sudo apt-get install mosquitto")
    why = "DEMO_BROKER=amqtt" if BROKER == "amqtt" else \
        "Mosquitto is not installed and cannot be installed here (as root, Debian's package would be)"
    print(f"{why}: using amqtt, an embedded Python broker speaking MQTT 3.1.1", flush=True)
    conf = write(folder / "amqtt.yaml", f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                 "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
    with (folder / "amqtt.log").open("wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "amqtt"), "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT)
    return proc, "3.1.1"


def console_port() -> int:
    wanted = int(os.environ.get("DEMO_CONSOLE_PORT", "8080"))
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


CONSOLE_PORT = console_port()


def console_config(mqtt_port: int, protocol: str) -> tuple[Path, str]:
    """The console's configuration and an admin with a fresh random password (printed for the person watching)."""
    from console import auth, config
    from console.store import db

    folder = RUN / "console"
    folder.mkdir(parents=True, exist_ok=True)
    conf = write(folder / "console.toml", f"""
models_dir = "{REPO / 'models'}"
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
protocol = "{protocol}"
[web]
port = {CONSOLE_PORT}
[state]
dir = "{folder}"
""")
    cfg = config.load(conf)
    engine = db.engine_for(cfg.database_url())
    db.migrate(engine)
    password = secrets.token_urlsafe(12)
    auth.add_user(engine, "admin", password, "admin")
    engine.dispose()
    return conf, password


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def main() -> int:
    sys.path.insert(0, str(REPO))
    from converter import synth
    from harness.broker import Collector, free_port, wait_port
    from harness.smtp import Smtp

    for folder in (RUN, MAIL):
        if folder.exists():
            shutil.rmtree(folder)
    MAIL.mkdir(parents=True)
    for sub in ("broker", "edge", "relay"):
        (RUN / sub).mkdir(parents=True)
    video = RUN / "line.avi"
    print("writing a production-line video of synthetic parts ...", flush=True)
    truth = synth.write_video(video, parts=16, seed=7, size=256, fps=12, frames_per_part=24, defect_rate=0.4,
                              lead_frames=36)  # the line starts empty: the unit learns its belt
    mqtt_port, smtp_port, modbus_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    smtp = Smtp(folder=MAIL, port=smtp_port)
    sink = smtp.sink
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        broker, protocol = start_broker(mqtt_port, RUN / "broker")
        procs.append(broker)
        wait_port(mqtt_port)
        smtp.start()
        relay_conf = write(RUN / "relay" / "relay.toml", f"""
metrics_interval_s = 5
console_url = "http://127.0.0.1:{CONSOLE_PORT}"
[stations]
station1 = "Demo line, station 1"
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
protocol = "{protocol}"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "defect-relay@demo.local"
[storm]
cooldown_s = 20
digest_window_s = 20
[delivery]
evidence_wait_s = 60
[state]
dir = "{RUN / 'relay'}"
[[routes]]
devices = ["*"]
recipients = ["line-lead@demo.local"]
""")
        edge_conf = write(RUN / "edge" / "edge.toml", f"""
[device]
id = "station1"
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
protocol = "{protocol}"
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
sample_share = 0.05
sample_per_minute = 6
[gradcam]
auto_on = ["defect"]
[parts]
presence = true
[line.modbus]
enabled = true
host = "127.0.0.1"
port = {modbus_port}
[metrics]
interval_s = 2
[state]
dir = "{RUN / 'edge'}"
""")
        console_conf, password = console_config(mqtt_port, protocol)
        for module, cfg, log in (("relay.cli", relay_conf, "relay.log"), ("edge.cli", edge_conf, "edge.log"),
                                 ("console.cli", console_conf, "console.log")):
            with (RUN / log).open("wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", module, "--config", str(cfg), "run"]
                                              if module == "console.cli" else
                                              [sys.executable, "-m", module, "run", "--config", str(cfg)],
                                              stdout=out, stderr=subprocess.STDOUT, env=env))
        print(f"the line console: http://127.0.0.1:{CONSOLE_PORT}/  user admin, password {password}", flush=True)
        watch = Collector(mqtt_port, "defect-edge/#", persistent=False)
        live(watch, sink, stop, truth)
        plc_view(modbus_port)
        watch.close()
    finally:
        for p in reversed(procs):  # one at a time, the broker last: each says goodbye to it cleanly
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        smtp.stop()
    summary()
    left = [p.pid for p in procs if p.poll() is None]
    if left:
        print(f"processes still running: {left}", file=sys.stderr)
        return 1
    return 0


def live(watch: Any, sink: Any, stop: threading.Event, truth: list[dict[str, object]]) -> None:
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
                             "p50": 0.0, "p95": 0.0, "parts": []}

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
            elif kind == "part":
                part = json.loads(payload)
                state["parts"].append(part["verdict"])
                crop = part.get("crop")
                recent.append(f"part {part['seq']:>3}  {part['verdict'].upper():<6} p={part.get('p_defect', 0):.3f}  "
                              f"{len(part['frames'])} frames" + (f", saw {crop[2]}x{crop[3]} at {crop[0]},{crop[1]}"
                                                                  if crop else ""))
            elif kind == "alert":
                state["alerts"] += 1
            elif kind.startswith("gradcam/"):
                state["heatmaps"] += 1
            elif kind.startswith(("snapshot/", "frame/")):  # what the model saw, and where on the belt
                what, frame_id = kind.split("/", 1)
                SEEN.mkdir(parents=True, exist_ok=True)
                (SEEN / f"{frame_id}{'_frame' if what == 'frame' else ''}.jpg").write_bytes(payload)
            elif kind == "metrics":
                m = json.loads(payload)
                inf = m["latency_ms"].get("inference", {})
                state.update(fps=m["fps"], p50=inf.get("p50", 0.0), p95=inf.get("p95", 0.0))

    def table() -> Any:
        t = Table(title=f"defect-edge demo: station1 on a replayed line ({max(0, end - time.monotonic()):.0f} s left,"
                        " Ctrl-C to stop)")
        t.add_column("last parts and frames (call, p_defect)")
        t.add_column("unit", justify="right")
        rate = state["defective"] / state["results"] if state["results"] else 0.0
        parts = state["parts"]
        stats = [f"fps {state['fps']:.1f}", f"inference p50 {state['p50']:.2f} ms", f"p95 {state['p95']:.2f} ms",
                 f"parts {len(parts)}, NG {parts.count('ng')}", f"frames classified {state['results']}",
                 f"defective frames {rate:.0%}", f"alerts {state['alerts']}",
                 f"heatmaps {state['heatmaps']}", f"mails sent {len(sink.mails)}"]
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
            print(f"{max(0, end - time.monotonic()):4.0f}s  parts {len(state['parts'])}  "
                  f"results {state['results']}  fps {state['fps']:.1f}  "
                  f"alerts {state['alerts']}  heatmaps {state['heatmaps']}  mails {len(sink.mails)}", flush=True)
            stop.wait(5)
    update()
    defective_parts = sum(1 for t in truth if t["defect"])
    parts = state["parts"]
    first = parts[:len(truth)]  # the video loops: its first pass against its ground truth, part by part
    right = sum(1 for v, t in zip(first, truth, strict=False) if v == ("ng" if t["defect"] else "ok"))
    print(f"\nthe video holds {len(truth)} parts, {defective_parts} of them defective. The unit judged "
          f"{len(parts)} parts ({parts.count('ng')} NG, {parts.count('ok')} OK, "
          f"{len(parts) - parts.count('ng') - parts.count('ok')} unsure or missed) from {state['results']} "
          f"classified frames; on the first pass {right} of {len(first)} verdicts match the ground truth. "
          f"{state['alerts']} alerts, {state['heatmaps']} heatmaps.")
    if SEEN.is_dir():
        print(f"what the model saw of each alerted part: {SEEN} (NAME.jpg, the crop it was fed; NAME_frame.jpg, the "
              "whole frame with the crop's box)")


def plc_view(port: int) -> None:
    """What a PLC polling the unit's Modbus registers reads now (the register map: docs/line.md)."""
    try:
        from pymodbus.client import ModbusTcpClient
    except ImportError:
        return
    client = ModbusTcpClient("127.0.0.1", port=port)
    if not client.connect():
        print("the unit's Modbus server did not answer")
        return
    reply = client.read_holding_registers(0, count=10, device_id=1)
    client.close()
    if reply.isError():
        print(f"the unit's Modbus server answered {reply}")
        return
    r = reply.registers
    from edge.io.state import VERDICT_CODES

    verdict = {code: name for name, code in VERDICT_CODES.items()}.get(r[3], r[3])
    print(f"a PLC on Modbus TCP 127.0.0.1:{port} reads: heartbeat {r[0]}, state {r[1]}, last part {r[2]}: "
          f"{verdict}, p_defect x1000 {r[4]}, trigger-to-verdict {r[5]} ms, missed {r[6]}")


def summary() -> None:
    mails = sorted(MAIL.glob("*.eml"))
    print(f"\n{len(mails)} mails in {MAIL}:")
    for path in mails:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        files = [p.get_filename() for p in msg.walk() if p.get_content_maintype() == "image"]
        print(f"  {path.name}: {msg['Subject']}  [{', '.join(files) or 'no picture'}]")
    with_heat = sum(1 for p in mails if b".gradcam.jpg" in p.read_bytes())
    print(f"{with_heat} of them carry a Grad-CAM heatmap")
    print(f"the unit's database (results, events, heatmaps, outbox): {RUN / 'edge' / 'state.db'}")
    print(f"the console's database: {RUN / 'console' / 'console.db'}")
    print(f"logs: {RUN / 'edge.log'}, {RUN / 'relay.log'}, {RUN / 'console.log'}")


if __name__ == "__main__":
    sys.exit(main())
