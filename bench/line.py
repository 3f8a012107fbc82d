"""Trigger to verdict at the line: how long a PLC waits for its answer, on each of the line's wires.

The unit runs in this process (``edge.daemon.Daemon``, on_demand mode, the committed MobileNetV2 int8) with its Modbus
server and its GPIO on gpiozero's mock pins, against a local Mosquitto. The camera is an in-memory one delivering a
frame every millisecond, so the wait for the next exposure (up to a frame period on a real camera, which no software
shortens) is not what is measured. For each interface, ``--parts`` parts at ``--rate`` parts per second:

- ``modbus``: a pymodbus client writes 1 to the trigger register, then reads registers 2-5 until the part sequence
  changes: the time from the write to the read that shows the verdict.
- ``gpio``: the sensor pin is driven high (then low), and the time runs until the OK or reject pin goes high.
- ``mqtt``: ``cmd/trigger`` is published at QoS 1 and the time runs until the ``part`` message arrives.

Next to it, bare ``invoke()`` of the same interpreter in the same run. The target: p99 <= invoke + 15 ms on each.

Run: ``.venv/bin/python -m bench.line [--parts 500] [--rate 10]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from converter import synth
from edge import config as edge_config
from edge.metrics import percentile
from edge.sources.base import Camera
from harness import REPO
from harness.broker import Broker, Collector, free_port
from harness.daemon import part_folder
from harness.frames import MemoryFrames

DEVICE = "bench"
BASE = f"defect-edge/{DEVICE}"
TRIGGER_PIN, REJECT_PIN, OK_PIN = 17, 27, 23


def invoke_ms(clf: Any, runs: int = 300) -> tuple[float, float]:
    """(median, p99) of bare ``invoke()`` on the unit's own interpreter."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        clf.interpreter.invoke()
        times.append((time.perf_counter() - t) * 1e3)
    return percentile(times, 50), percentile(times, 99)


def paced(parts: int, rate: float, one: Callable[[], float]) -> list[float]:
    """Run ``one`` (a trigger, returning its latency in ms) ``parts`` times at ``rate`` per second."""
    out = []
    start = time.perf_counter()
    for i in range(parts):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        out.append(one())
    return out


def modbus_trigger(port: int) -> Callable[[], float]:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port)
    if not client.connect():
        raise SystemExit(f"the unit's Modbus server on {port} does not answer")

    def one() -> float:
        before = client.read_holding_registers(2, count=4, device_id=1).registers[0]
        t = time.perf_counter()
        client.write_register(10, 1, device_id=1)
        while client.read_holding_registers(2, count=4, device_id=1).registers[0] == before:
            if time.perf_counter() - t > 5:
                raise SystemExit("modbus: no verdict within 5 s")
        return (time.perf_counter() - t) * 1e3

    return one


def gpio_trigger() -> Callable[[], float]:
    from gpiozero import Device

    pins = Device.pin_factory
    sensor, outputs = pins.pin(TRIGGER_PIN), (pins.pin(REJECT_PIN), pins.pin(OK_PIN))

    def rising_edges() -> int:  # the mock pins record every change: a short pulse is not missed between polls
        return sum(1 for p in outputs for s in p.states if s.state)

    def one() -> float:
        before = rising_edges()
        t = time.perf_counter()
        sensor.drive_high()
        while rising_edges() == before:
            time.sleep(0.0002)  # a pure-Python busy loop would hold the GIL from the unit it is timing
            if time.perf_counter() - t > 5:
                raise SystemExit("gpio: no pulse within 5 s")
        sensor.drive_low()
        return (time.perf_counter() - t) * 1e3

    return one


def mqtt_trigger(collector: Collector) -> Callable[[], float]:
    def one() -> float:
        before = len(collector.on("/part"))
        t = time.perf_counter()
        collector.client.publish(f"{BASE}/cmd/trigger", b"{}", qos=1)
        if not collector.wait(lambda m: sum(1 for x, _, _ in m if x.endswith("/part")) > before, 5):
            raise SystemExit("mqtt: no part message within 5 s")
        return (time.perf_counter() - t) * 1e3

    return one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--parts", type=int, default=500)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.environ["GPIOZERO_PIN_FACTORY"] = "mock"  # no pins here: gpiozero's own mock factory
    from edge.daemon import Daemon

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Nagle off on the broker side: without it every small publish waits ~40 ms for a delayed ACK.
        broker = Broker(work / "broker", extra="allow_anonymous true\nset_tcp_nodelay true\n").start()
        modbus_port = free_port()
        cfg = edge_config.parse({
            "device": {"id": DEVICE},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "camera": {"source": str(part_folder(work / "parts", count=4))},
            "model": {"name": "mobilenetv2", "models_dir": str(REPO / "models"), "threads": a.threads},
            "inference": {"mode": "on_demand"},
            "parts": {"frame_results": False, "max_frame_delay_ms": 50},
            "alerts": {"snapshot": False}, "gradcam": {"enabled": False},
            "state": {"dir": str(work / "state")},
            "line": {"modbus": {"enabled": True, "host": "127.0.0.1", "port": modbus_port},
                     "gpio": {"enabled": True, "trigger_pin": TRIGGER_PIN, "reject_pin": REJECT_PIN,
                              "ok_pin": OK_PIN, "pulse_ms": 2, "trigger_bounce_ms": 0}},
        })
        daemon = Daemon(cfg)
        images = [cv2.cvtColor(p.image, cv2.COLOR_RGB2BGR) for p in synth.iter_parts(5, 8, size=480)]
        frames = MemoryFrames(images, loop=True, period=0.004)
        frames.frame_order = daemon.camera.frame_order
        daemon.camera = daemon.pipeline.camera = Camera(frames)
        collector = Collector(broker.port, f"{BASE}/part", persistent=False)
        figures: dict[str, list[float]] = {}
        errors: list[BaseException] = []

        def drive() -> None:
            try:
                time.sleep(2.0)  # the servers up, the first frames in
                for name, one in (("modbus", modbus_trigger(modbus_port)), ("gpio", gpio_trigger()),
                                  ("mqtt", mqtt_trigger(collector))):
                    print(f"{name}: {a.parts} parts at {a.rate:g}/s ...", flush=True)
                    figures[name] = paced(a.parts, a.rate, one)
                figures["invoke"] = list(invoke_ms(daemon.classifier))
            except BaseException as e:
                errors.append(e)
            finally:
                daemon.request_stop()

        threading.Thread(target=drive, daemon=True).start()
        daemon.run()
        timings = [json.loads(p)["timings_ms"] for p in collector.on("/part")]
        inside_ms = [t["trigger_to_verdict"] for t in timings]
        inside = (round(percentile(inside_ms, 50), 3), round(percentile(inside_ms, 99), 3))
        first_frame = round(percentile([t["trigger_to_first_frame"] for t in timings], 50), 3)
        collector.close()
        broker.stop()
        if errors:
            raise errors[0]
    inv50, inv99 = figures.pop("invoke")
    out: dict[str, Any] = {"invoke_ms": round(inv50, 3), "invoke_p99_ms": round(inv99, 3), "parts": a.parts,
                           "rate": a.rate, "threads": a.threads}
    print(f"\nbare invoke(): median {inv50:.2f} ms, p99 {inv99:.2f} ms")
    print(f"{'interface':<10} {'median ms':>10} {'p99 ms':>8} {'p99 - invoke':>13} {'target <= 15':>13}")
    for name, times in figures.items():
        p50, p99 = percentile(times, 50), percentile(times, 99)
        out[f"trigger_to_verdict_p50_ms_{name}"] = round(p50, 3)
        out[f"trigger_to_verdict_p99_ms_{name}"] = round(p99, 3)
        verdict = "met" if p99 <= inv50 + 15 else "MISSED"
        print(f"{name:<10} {p50:>10.2f} {p99:>8.2f} {p99 - inv50:>13.2f} {verdict:>13}")
    print(f"inside the unit, trigger to verdict (the part messages' own timing): median {inside[0]:.2f} ms, "
          f"p99 {inside[1]:.2f} ms; trigger to its first frame: median {first_frame:.2f} ms")
    out["inside_trigger_to_first_frame_p50_ms"] = first_frame
    out["inside_trigger_to_verdict_p50_ms"], out["inside_trigger_to_verdict_p99_ms"] = inside
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
