"""A real PostgreSQL cluster of the suite's own (Debian's ``postgresql`` binaries), on a free loopback port, in a
temporary folder, started and stopped by the test. PostgreSQL refuses to run as root: as root the cluster runs as
the ``postgres`` user the package creates; otherwise as the current user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.broker import free_port


def binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Postgres:
    """``Postgres().start()``; its folder is made under the system's temporary directory (as root, owned by
    ``postgres``: a test's own temporary folder is private to root, and the server could not reach it)."""

    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bin = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="defect-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.user = "console"
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)

    def start(self) -> Postgres:
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
            self.folder.chmod(0o700)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "console")
        return self

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/console"

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run(str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), check=False
                         ).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not come up")
