"""Store and forward (``docs/mqtt.md``): every QoS 1 message is written here before it is sent, and deleted on PUBACK.

paho keeps unacknowledged messages in memory only; a broker outage or a daemon restart would lose them. Here they
survive both and drain in order. The outbox is bounded by bytes: when a new message would overflow it, the least
valuable messages go first (sampled snapshots of confident calls, results, metrics, the snapshot and Grad-CAM images
of alerts, then alerts, oldest first within a kind), and what was shed is counted, persistently, and reported in
``metrics``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from contract.sqlite import connect

# Lower sheds first. Images are evidence for an alert but cost far more bytes than the alert itself.
PRIORITY: dict[str, int] = {"sample": 0, "result": 1, "metrics": 2, "image": 3, "reply": 4, "event": 4, "part": 5,
                            "alert": 5}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_shed ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS outbox_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Outgoing:
    """A message handed to the outbox, stamped when it was published rather than when it is stored."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    kind: str = "alert"
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str


class Outbox:
    """Thread-safe: the publisher thread stores, paho's network thread acknowledges."""

    def __init__(self, path: Path, *, max_bytes: int):
        self.max_bytes = max_bytes
        self._db = connect(path)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, kind: str = "alert") -> int:
        """Store a message durably and return its id; shed older, less valuable ones if the outbox is full."""
        return self.put_many([Outgoing(topic, payload, qos, retain, kind)])[0]

    def put_many(self, messages: list[Outgoing]) -> list[int]:
        """Store messages in one transaction, in order, and return their ids; all are stored, or none."""
        ids = []
        with self._lock:
            before = self._bytes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for m in messages:
                    size = len(m.payload) + len(m.topic)
                    self._make_room(size, PRIORITY[m.kind])
                    cur = self._db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, kind, priority, created, size) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (m.topic, m.payload, m.qos, int(m.retain), m.kind, PRIORITY[m.kind], m.created, size))
                    ids.append(int(cur.lastrowid or 0))
                    self._bytes += size
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._bytes = before  # what was shed inside the transaction is back
                raise
            return ids

    def _make_room(self, size: int, priority: int) -> None:
        """Inside a transaction: delete the least valuable, oldest messages until ``size`` more bytes fit."""
        excess = self._bytes + size - self.max_bytes
        while excess > 0:
            row = self._db.execute("SELECT id, kind, size, priority FROM outbox ORDER BY priority, id LIMIT 1"
                                   ).fetchone()
            if row is None or row[3] > priority:
                break  # nothing less valuable left: keep what is there and accept the new message over the bound
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._db.execute("INSERT INTO outbox_counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET "
                             "value = value + 1", (f"shed_{row[1]}",))
            self._bytes -= row[2]
            excess -= row[2]

    def ack(self, message_ids: list[int]) -> None:
        """Forget messages the broker has acknowledged (one transaction for the lot)."""
        with self._lock:
            self._db.execute("BEGIN")
            for message_id in message_ids:
                row = self._db.execute("DELETE FROM outbox WHERE id = ? RETURNING size", (message_id,)).fetchone()
                if row:
                    self._bytes -= row[0]
            self._db.execute("COMMIT")

    def pending(self, *, after_id: int = 0, limit: int = 100) -> list[Message]:
        """Messages not yet acknowledged, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, kind FROM outbox WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def depth(self) -> tuple[int, int]:
        """(messages, bytes) waiting."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]), self._bytes

    def shed_counts(self) -> dict[str, int]:
        with self._lock:
            return {name.removeprefix("shed_"): int(v)
                    for name, v in self._db.execute("SELECT name, value FROM outbox_counters")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
