"""The one way the product opens a SQLite database: WAL, so readers never block the writer, and NORMAL sync.

WAL with ``synchronous=NORMAL`` survives a process crash (a power cut may lose the last commits, never corrupt the
file) and commits fast enough for the unit's outbox. ``isolation_level=None``: transactions are explicit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
