"""Does the unit's memory stay flat? A daemon replays casting photos in a loop, unpaced, for a while.

A unit runs for months, so what matters is the slope, not the level: ``rss_growth_mb_per_hour`` is the least-squares
slope of the daemon's own ``rss_mb`` (from its ``metrics``) over the second half of the run, after warm-up. Target
<= 1 MB per hour. Unpaced, a few minutes here are hundreds of thousands of frames: months of a line at a few parts a
second would be about the same number of frames as a day here, so run it longer where that matters.

Run: ``.venv/bin/python -m bench.soak [--seconds 900] [--model mobilenetv2]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO
from harness.broker import Broker, Collector
from harness.daemon import write_toml
from harness.data import casting_sample, link_into


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var * 3600 if var else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=900)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--interval", type=float, default=30, help="metrics interval (s)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = Broker(tmp / "broker").start()
        frames = link_into(casting_sample(500), tmp / "frames")
        cfg = write_toml(tmp / "edge.toml", {
            "device": {"id": "soak"}, "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "camera": {"source": str(frames), "loop": True},
            "model": {"name": a.model, "models_dir": str(REPO / "models")},
            "alerts": {"on_low_confidence": False}, "gradcam": {"enabled": False},
            "metrics": {"interval_s": a.interval}, "state": {"dir": str(tmp / "state")}})
        c = Collector(broker.port, "defect-edge/soak/metrics", persistent=False)
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(a.seconds)
        finally:
            proc.terminate()
            proc.wait(30)
            c.close()
            broker.stop()
    metrics = [json.loads(p) for _, p, _ in c.messages]
    points = [(m["uptime_s"], m["rss_mb"]) for m in metrics]
    frames_total = sum(m["frames"] for m in metrics)
    print(f"model {a.model}, {len(metrics)} metrics over {a.seconds:.0f} s, {frames_total} frames")
    print(f"{'uptime s':>9} {'fps':>7} {'rss MB':>7}")
    for m in metrics:
        print(f"{m['uptime_s']:9.0f} {m['fps']:7.1f} {m['rss_mb']:7.1f}")
    growth = slope_per_hour(points[len(points) // 2:])
    print(f"RSS {points[0][1]:.1f} MB at first, {points[-1][1]:.1f} MB at the end; growth over the second half "
          f"{growth:+.2f} MB/h (target <= 1)")
    print(json.dumps({"frames": frames_total, "rss_first_mb": points[0][1], "rss_last_mb": points[-1][1],
                      "rss_growth_mb_per_hour": round(growth, 3)}))


if __name__ == "__main__":
    main()
