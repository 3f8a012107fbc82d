"""Running ``defect-relay run`` as systemd would: its own process with a config file, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import REPO
from harness.daemon import write_toml


class RelayProc:
    def __init__(self, work: Path, cfg: dict[str, Any]):
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.config = write_toml(work / "relay.toml", {k: v for k, v in cfg.items() if k != "routes"})
        if "routes" in cfg:
            with self.config.open("a") as f:
                for r in cfg["routes"]:
                    f.write("[[routes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items()))
        self.log = work / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RelayProc:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")
