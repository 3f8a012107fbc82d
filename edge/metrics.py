"""Latency percentiles per stage, frame rates, and the board's own health readings for the ``metrics`` topic."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The product's one percentile (linear interpolation, as NumPy's default): metrics, ``classify``, benchmarks."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


class StageLatency:
    """Per-stage latencies since the last report (bounded), summarised as p50/p95/p99 in ms."""

    def __init__(self, cap: int = 20_000):
        self.cap = cap
        self._values: dict[str, list[float]] = defaultdict(list)
        self._frames = 0
        self._lock = threading.Lock()

    def add(self, timings: dict[str, float]) -> None:
        with self._lock:
            self._frames += 1
            for stage, ms in timings.items():
                v = self._values[stage]
                if len(v) < self.cap:
                    v.append(ms)

    def take(self) -> tuple[int, dict[str, dict[str, float]]]:
        """(frames, {stage: {p50, p95, p99}}) since the last call, and start a new window."""
        with self._lock:
            values, self._values = self._values, defaultdict(list)
            frames, self._frames = self._frames, 0
        summary = {}
        for stage, v in values.items():
            summary[stage] = {f"p{q}": round(percentile(v, q), 3) for q in (50, 95, 99)}
        return frames, summary


def cpu_temperature_c() -> float | None:
    """The SoC temperature where the board exposes one (Raspberry Pi, Jetson), else None."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        try:
            return round(int((zone / "temp").read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def name_os_threads() -> int:
    """Give every Python thread of this process its name in the kernel too (``/proc/self/task/TID/comm``, 15
    characters), so ``top -H``, ``ps -L`` and a benchmark reading /proc see ``capture``, ``publisher``,
    ``mqtt-link`` rather than ``python`` eight times. Returns how many were named; a thread that ended meanwhile,
    or a kernel without /proc, is passed over."""
    named = 0
    for t in threading.enumerate():
        if t.native_id is None or t is threading.main_thread():
            continue
        try:
            Path(f"/proc/self/task/{t.native_id}/comm").write_text(t.name[:15])
            named += 1
        except OSError:
            pass
    return named
