"""The relay's durable state in SQLite (WAL): nothing it has accepted is lost to a restart or an SMTP outage.

- ``alerts``: every accepted alert, keyed by its dedup key (QoS 1 may deliver twice: the second is a no-op), stored
  before the MQTT acknowledgement; then marked as mailed or digested.
- ``evidence``: snapshot and Grad-CAM JPEGs by frame id, attached when they arrive within the evidence wait.
- ``outgoing``: composed mails and notifications, retried with exponential backoff; after too many attempts or too
  long they move to the dead-letter state and are reported.
- ``escalations``: an alert's second round of recipients, due at a time unless the console reviewed its frame (or,
  for a camera gone, the camera came back) before; ``reviews``: the console's reviewed frames, as it announced them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.sqlite import Step, connect, migrate

# The relay's queue's schema, step by step (contract/sqlite.py); a step, once released, never changes.
SCHEMA: tuple[Step, ...] = (
    (  # 1: as before versions were kept
        """CREATE TABLE IF NOT EXISTS alerts (
    dedup_key TEXT PRIMARY KEY, device_id TEXT NOT NULL, kind TEXT NOT NULL, frame_id TEXT, payload TEXT NOT NULL,
    received REAL NOT NULL, state TEXT NOT NULL DEFAULT 'new', outgoing_id INTEGER
)""",
        "CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, received)",
        """CREATE TABLE IF NOT EXISTS evidence (
    frame_id TEXT NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (frame_id, kind)
)""",
        """CREATE TABLE IF NOT EXISTS outgoing (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, target TEXT NOT NULL, body BLOB NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', last_error TEXT NOT NULL DEFAULT '', sent REAL
)""",
        "CREATE INDEX IF NOT EXISTS outgoing_due ON outgoing (state, next_attempt)",
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ),
    (  # 2: escalation when nobody reviews
        """CREATE TABLE escalations (
    dedup_key TEXT NOT NULL, due REAL NOT NULL, after_min REAL NOT NULL, recipients TEXT NOT NULL,
    notify TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'waiting', PRIMARY KEY (dedup_key, recipients, notify)
)""",
        "CREATE INDEX escalations_due ON escalations (state, due)",
        """CREATE TABLE reviews (
    device_id TEXT NOT NULL, frame_id TEXT NOT NULL, verdict TEXT NOT NULL, by TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device_id, frame_id)
)""",
    ),
)


@dataclass(frozen=True)
class Escalation:
    """Who hears of an alert a second time, and when: ``after_min`` after it was sent, unless handled by then."""

    after_min: float
    recipients: tuple[str, ...]
    notify: tuple[str, ...]


@dataclass(frozen=True)
class Outgoing:
    id: int
    channel: str  # smtp | apprise
    target: str  # comma-separated recipients, or the Apprise URL
    body: bytes  # the whole RFC 5322 message, or the notification (JSON: title, body, picture)
    created: float
    attempts: int


class Store:
    def __init__(self, path: Path):
        self._db = connect(path)
        migrate(self._db, "relay", SCHEMA, what=str(path))
        self._lock = threading.RLock()

    def _q(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def count(self, name: str, n: int = 1) -> None:
        self._q("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", name, n, n)

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._q("SELECT name, value FROM counters")}

    # -- intake (paho's thread, before the PUBACK) ---------------------------------------------------------------
    def accept_alert(self, dedup_key: str, device_id: str, kind: str, frame_id: str | None, payload: str) -> bool:
        """Store an alert durably; False when its dedup key was seen before."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO alerts (dedup_key, device_id, kind, frame_id, payload, "
                                   "received) VALUES (?, ?, ?, ?, ?, ?)",
                                   (dedup_key, device_id, kind, frame_id, payload, time.time()))
            fresh = cur.rowcount == 1
        self.count("alerts_accepted" if fresh else "alerts_duplicate")
        return fresh

    def add_evidence(self, frame_id: str, kind: str, data: bytes) -> None:
        self._q("INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?)", frame_id, kind, data, time.time())

    def evidence(self, frame_id: str | None) -> dict[str, bytes]:
        if not frame_id:
            return {}
        return {k: bytes(d) for k, d in self._q("SELECT kind, data FROM evidence WHERE frame_id = ?", frame_id)}

    # -- scheduling ----------------------------------------------------------------------------------------------
    def new_alerts(self) -> list[dict[str, Any]]:
        rows = self._q("SELECT dedup_key, device_id, kind, frame_id, payload, received FROM alerts "
                       "WHERE state = 'new' ORDER BY received, rowid")
        return [dict(zip(("dedup_key", "device_id", "kind", "frame_id", "payload", "received"), r, strict=True))
                for r in rows]

    def enqueue(self, keys: list[str], state: str, items: list[tuple[str, str, bytes]],
                escalations: Sequence[Escalation] = ()) -> None:
        """In one transaction: queue the outgoing items, mark the alerts they carry and schedule their escalations
        (so none is lost, and none happens twice)."""
        now = time.time()
        with self._transaction():
            first = self._queue(items, now)
            self._db.executemany("UPDATE alerts SET state = ?, outgoing_id = ? WHERE dedup_key = ?",
                                 [(state, first, k) for k in keys])
            self._db.executemany(
                "INSERT OR IGNORE INTO escalations (dedup_key, due, after_min, recipients, notify) "
                "VALUES (?, ?, ?, ?, ?)",
                [(k, now + e.after_min * 60, e.after_min, json.dumps(e.recipients), json.dumps(e.notify))
                 for k in keys for e in escalations])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _queue(self, items: list[tuple[str, str, bytes]], now: float) -> int | None:
        """Insert outgoing items (inside a transaction); the first one's id."""
        first = None
        for channel, target, body in items:
            cur = self._db.execute("INSERT INTO outgoing (channel, target, body, created, next_attempt) "
                                   "VALUES (?, ?, ?, ?, ?)", (channel, target, body, now, now))
            first = first or cur.lastrowid
        return first

    def mark(self, keys: list[str], state: str) -> None:
        with self._lock:
            self._db.executemany("UPDATE alerts SET state = ? WHERE dedup_key = ?", [(state, k) for k in keys])

    # -- escalation ----------------------------------------------------------------------------------------------
    def add_review(self, device_id: str, frame_id: str, verdict: str, by: str) -> None:
        self._q("INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)", device_id, frame_id, verdict, by, time.time())

    def due_escalations(self, now: float) -> list[tuple[dict[str, Any], Escalation, bool]]:
        """Escalations whose time has come: (the alert, whom to tell, whether it was handled meanwhile). Handled:
        the console reviewed the alert's frame, or a camera gone came back (its ``camera_back`` has the same
        ``since``)."""
        rows = self._q(
            "SELECT a.dedup_key, a.device_id, a.kind, a.frame_id, a.payload, a.received, e.after_min, e.recipients, "
            "e.notify, (EXISTS (SELECT 1 FROM reviews r WHERE r.device_id = a.device_id AND r.frame_id = a.frame_id)"
            " OR EXISTS (SELECT 1 FROM alerts b WHERE a.kind = 'camera_offline' AND b.kind = 'camera_back' "
            "AND b.device_id = a.device_id AND json_extract(b.payload, '$.since') = json_extract(a.payload, '$.since')"
            ")) FROM escalations e JOIN alerts a ON a.dedup_key = e.dedup_key WHERE e.state = 'waiting' AND e.due <= ?"
            " ORDER BY e.due", now)
        keys = ("dedup_key", "device_id", "kind", "frame_id", "payload", "received")
        return [(dict(zip(keys, r[:6], strict=True)),
                 Escalation(r[6], tuple(json.loads(r[7])), tuple(json.loads(r[8]))), bool(r[9])) for r in rows]

    def escalated(self, dedup_key: str, e: Escalation, state: str, items: list[tuple[str, str, bytes]]) -> None:
        """One escalation done (``sent`` with its outgoing items, or ``handled``), in one transaction."""
        with self._transaction():
            self._queue(items, time.time())
            self._db.execute("UPDATE escalations SET state = ? WHERE dedup_key = ? AND recipients = ? AND notify = ?",
                             (state, dedup_key, json.dumps(e.recipients), json.dumps(e.notify)))

    # -- delivery ------------------------------------------------------------------------------------------------
    def due(self, limit: int = 20) -> list[Outgoing]:
        rows = self._q("SELECT id, channel, target, body, created, attempts FROM outgoing WHERE state = 'pending' "
                       "AND next_attempt <= ? ORDER BY id LIMIT ?", time.time(), limit)
        return [Outgoing(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def delivered(self, item_id: int) -> None:
        self._q("UPDATE outgoing SET state = 'sent', sent = ?, attempts = attempts + 1 WHERE id = ?", time.time(),
                item_id)

    def failed(self, item: Outgoing, error: str, *, retry_in: float | None) -> None:
        """Schedule another attempt in ``retry_in`` seconds, or move to the dead letters when None."""
        if retry_in is None:
            self._q("UPDATE outgoing SET state = 'dead', attempts = attempts + 1, last_error = ? WHERE id = ?",
                    error[:500], item.id)
        else:
            self._q("UPDATE outgoing SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                    time.time() + retry_in, error[:500], item.id)

    def outgoing_counts(self) -> dict[str, int]:
        return {f"{ch}_{st}": int(n) for ch, st, n in
                self._q("SELECT channel, state, COUNT(*) FROM outgoing GROUP BY channel, state")}

    def dead_letters(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._q("SELECT id, channel, target, attempts, last_error, created FROM outgoing WHERE state = 'dead' "
                       "ORDER BY id DESC LIMIT ?", limit)
        return [dict(zip(("id", "channel", "target", "attempts", "last_error", "created"), r, strict=True))
                for r in rows]

    def prune_evidence(self, older_than_s: float) -> None:
        self._q("DELETE FROM evidence WHERE received < ?", time.time() - older_than_s)
        self._q("DELETE FROM reviews WHERE received < ?", time.time() - 7 * 86400)

    def close(self) -> None:
        with self._lock:
            self._db.close()
