"""Running ``defect-console run`` as systemd would: its own process with a ``console.toml``, users made with its own
code, waited on until its web server and historian are up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import REPO
from harness.broker import free_port
from harness.daemon import write_toml

PASSWORD = "correct-horse-battery"  # every test user's password


class ConsoleProc:
    def __init__(self, work: Path, broker_port: int, *, instance: str = "console1", db_url: str = "",
                 users: dict[str, str] | None = None, models_dir: Path | None = None, releases_dir: Path | None = None,
                 **sections: dict[str, Any]):
        work.mkdir(parents=True, exist_ok=True)
        self.work, self.port = work, 0
        self.cfg: dict[str, Any] = {
            "id": instance,
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 1, "reconnect_max_s": 2},
            "database": {"url": db_url, "batch_wait_ms": 50},
            "web": {"port": 0, "login_attempts_per_minute": 5},
            "state": {"dir": str(work / "state")},
        }
        if models_dir is not None:
            self.cfg["models_dir"] = str(models_dir)
        if releases_dir is not None:
            self.cfg["releases_dir"] = str(releases_dir)
        for k, v in sections.items():
            self.cfg.setdefault(k, {}).update(v)
        self.config = self._write_config()
        self.users = users if users is not None else {"admin": "admin", "eng": "engineer", "op": "operator",
                                                      "view": "viewer"}
        self.log_path = work / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        """With a fresh free port: a port found free can be taken before the console binds it (by any outgoing
        connection's ephemeral port), so :meth:`start` tries again with another."""
        self.port = self.cfg["web"]["port"] = free_port()
        return write_toml(self.work / "console.toml", self.cfg)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_users(self) -> None:
        from console import auth, config
        from console.store import db

        cfg = config.load(self.config)
        engine = db.engine_for(cfg.database_url())
        db.migrate(engine)
        for name, role in self.users.items():
            with contextlib.suppress(auth.AuthError):  # a second instance on the same database: they are there
                auth.add_user(engine, name, PASSWORD, role)
        engine.dispose()

    def start(self, *, wait: bool = True) -> ConsoleProc:
        self.add_users()
        for attempt in range(3):
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "console.cli", "--config", str(self.config),
                                              "run"], stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                             env={**os.environ, "PYTHONPATH": str(REPO)})
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except AssertionError:
                if attempt == 2 or "address already in use" not in self.log():
                    raise
                self.config = self._write_config()
        return self

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the console exited:\n{self.log()[-3000:]}")
            try:
                if self.health()["historian"] == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the console did not come up:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
