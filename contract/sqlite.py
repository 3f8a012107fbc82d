"""The one way the product opens a SQLite database: WAL, so readers never block the writer, and NORMAL sync; and the
one way its schema moves on: numbered steps, each store's version kept in the file's ``schema_versions`` table.

WAL with ``synchronous=NORMAL`` survives a process crash (a power cut may lose the last commits, never corrupt the
file) and commits fast enough for the unit's outbox. ``isolation_level=None``: transactions are explicit.

A unit keeps its outbox, history and state for months, through upgrades: each store lists its schema as steps
(step 1 is the schema as it was before versions were kept, written ``IF NOT EXISTS``, so such a file is taken up as it
is), and :func:`migrate` runs the ones a file has not had, each in one transaction with the version it reaches. The
version is kept per store, not in ``PRAGMA user_version``: the unit's outbox and history share one file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

Step = Sequence[str]  # SQL statements, run in order in one transaction


class SchemaError(RuntimeError):
    """A database this program cannot use: written by a newer version, or a step that failed. Nothing was changed."""


def connect(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def version(db: sqlite3.Connection, store: str) -> int:
    """The schema version of ``store`` in ``db`` (0: never versioned)."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_versions WHERE store = ?", (store,)).fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection, store: str, steps: Sequence[Step], *, what: str) -> int:
    """Bring ``store`` in ``db`` to version ``len(steps)``: the steps after its version, each in its own
    transaction with the version it reaches, so a crash leaves it at a whole step. Returns the version. A store at
    a higher version (a newer program wrote it; this one would misread it) is refused, as is a step that fails,
    with :class:`SchemaError` saying which (``what``: the file, for the message)."""
    at = version(db, store)
    if at > len(steps):
        raise SchemaError(f"{what}: the {store} schema is at version {at}, written by a newer version of this "
                          f"program (this one knows {len(steps)}); install that version again, or move the file "
                          "aside to start afresh")
    for number, step in enumerate(steps[at:], start=at + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in step:
                db.execute(statement)
            db.execute("INSERT INTO schema_versions (store, version) VALUES (?, ?) ON CONFLICT(store) DO UPDATE "
                       "SET version = excluded.version", (store, number))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            db.execute("ROLLBACK")
            raise SchemaError(f"{what}: schema step {number} failed, nothing changed: {e}") from e
    return len(steps)
