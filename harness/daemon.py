"""Running `defect-edge run` as systemd would: a separate process with a config file, driven over MQTT and signals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2

from converter import synth
from harness import REPO


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, config: dict[str, Any]) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for section, values in ((k, v) for k, v in config.items() if isinstance(v, dict)):
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for k, v in values.items():
            if isinstance(v, dict):
                lines.append(f"[{section}.{k}]")
                lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def part_folder(folder: Path, count: int = 12, size: int = 128) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"part_{i:03d}.png"), synth.sample(77, i, size=size).image[:, :, ::-1])
    return folder


class Daemon:
    def __init__(self, workdir: Path, config: dict[str, dict[str, Any]], *, env: dict[str, str] | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = write_toml(workdir / "edge.toml", config)
        self.log_path = workdir / "daemon.log"
        self.state_db = Path(config["state"]["dir"]) / "state.db"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                          str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.workdir)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        return rc, time.monotonic() - t

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.state_db, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def wait_until(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.alive():
                raise AssertionError(f"daemon exited while waiting for {what}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")


BASE = "defect-edge/unit1"


def config(tmp: Path, port: int, models_dir: Path, **over: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A unit ``unit1`` replaying parts in a loop at 20 fps with ``models_dir``'s ``tiny_f32``; ``over`` per section."""
    cfg: dict[str, dict[str, Any]] = {
        "device": {"id": "unit1"},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 1, "reconnect_max_s": 2},
        "camera": {"source": str(part_folder(tmp / "parts")), "fps": 20, "loop": True},
        "model": {"name": "tiny_f32", "models_dir": str(models_dir)},
        "metrics": {"interval_s": 1},
        "state": {"dir": str(tmp / "state")},
    }
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


# Every frame is defective (p > 0) and alerts re-fire every 0.2 s: a steady, countable stream of alerts.
ALERT_STREAM = {"model": {"threshold": 0.0}, "alerts": {"on_low_confidence": False, "repeat_after_s": 0.2}}
