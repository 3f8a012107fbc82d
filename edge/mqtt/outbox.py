"""Store and forward (``docs/mqtt.md``): every QoS 1 message is written here before it is sent, and deleted on PUBACK.

paho keeps unacknowledged messages in memory only; a broker outage or a daemon restart would lose them. Here they
survive both and drain in order. The outbox is bounded by bytes: when a new message would overflow it, the least
valuable messages go first (sampled snapshots of confident calls, results, metrics, the snapshot and Grad-CAM images
of alerts, then alerts, oldest first within a kind), and what was shed is counted, persistently, and reported in
``metrics``.

It also keeps the unit's promises to the line (``docs/line.md``, "Restarts and crashes"): each part from the moment it
gets its sequence number (:meth:`Outbox.open_part`) until its ``part`` message is stored, and its verdict from the
moment it is decided (:meth:`Outbox.decide_part`), before any wire serves it. The message that settles a part is
stored in the same transaction that forgets it, so a crash at any moment leaves either the promise or the message,
never both and never neither; a restart publishes what it finds (:meth:`Outbox.unsettled`), and numbers parts on
from the last sequence number given.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from contract.sqlite import Step, connect, migrate

# Lower sheds first. Images are evidence for an alert but cost far more bytes than the alert itself.
PRIORITY: dict[str, int] = {"sample": 0, "result": 1, "metrics": 2, "image": 3, "reply": 4, "event": 4, "part": 5,
                            "alert": 5}

# The outbox's schema, step by step (contract/sqlite.py); a step, once released, never changes.
SCHEMA: tuple[Step, ...] = (
    (  # 1: the outbox, as before versions were kept
        """CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS outbox_shed ON outbox (priority, id)",
        "CREATE TABLE IF NOT EXISTS outbox_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ),
    (  # 2: the parts promised to the line and not yet published (2026-12-04)
        """CREATE TABLE IF NOT EXISTS parts (
    seq INTEGER PRIMARY KEY,
    part_id TEXT NOT NULL,
    source TEXT NOT NULL,
    opened REAL NOT NULL,
    decided TEXT
)""",
    ),
)


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
class Unsettled:
    """A part the unit had promised the line when it stopped: decided (``decided`` holds what was to be published)
    or still being inspected (None)."""

    seq: int
    part_id: str
    source: str
    opened: float  # wall clock
    decided: str | None


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str


class Outbox:
    """Thread-safe: the publisher and the MQTT link's thread store, the link's thread sends and acknowledges."""

    def __init__(self, path: Path, *, max_bytes: int):
        self.max_bytes = max_bytes
        self._db = connect(path)
        migrate(self._db, "outbox", SCHEMA, what=str(path))
        self._lock = threading.Lock()
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, kind: str = "alert") -> int:
        """Store a message durably and return its id; shed older, less valuable ones if the outbox is full."""
        return self.put_many([Outgoing(topic, payload, qos, retain, kind)])[0]

    def put_many(self, messages: list[Outgoing], *, settles: int | None = None) -> list[int]:
        """Store messages in one transaction, in order, and return their ids; all are stored, or none. ``settles``:
        the sequence number of the part whose verdict they carry, forgotten in the same transaction."""
        ids = []
        with self._lock:
            before = self._bytes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if settles is not None:
                    self._db.execute("DELETE FROM parts WHERE seq = ?", (settles,))
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

    def open_part(self, seq: int, part_id: str, source: str, opened: float) -> None:
        """A part got its sequence number: remembered until its verdict is published, and the number never given
        again."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO parts (seq, part_id, source, opened) VALUES (?, ?, ?, ?)",
                             (seq, part_id, source, opened))
            self._db.execute("INSERT INTO outbox_counters VALUES ('part_seq', ?) ON CONFLICT(name) DO UPDATE SET "
                             "value = MAX(value, excluded.value)", (seq,))
            self._db.execute("COMMIT")

    def decide_part(self, seq: int, part_id: str, source: str, opened: float, record: str) -> None:
        """The part's verdict, durable before the line is told: ``record`` is what a restart publishes if the unit
        stops before the part's messages are stored."""
        with self._lock:
            self._db.execute("INSERT INTO parts (seq, part_id, source, opened, decided) VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT(seq) DO UPDATE SET decided = excluded.decided",
                             (seq, part_id, source, opened, record))

    def unsettled(self) -> list[Unsettled]:
        """The parts promised and not published, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT seq, part_id, source, opened, decided FROM parts ORDER BY seq").fetchall()
        return [Unsettled(*r) for r in rows]

    def last_part_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM outbox_counters WHERE name = 'part_seq'").fetchone()
        return int(row[0]) if row else 0

    def ack(self, message_ids: list[int]) -> None:
        """Forget messages the broker has acknowledged: the lot in one statement, the ids as a JSON array (one
        statement per id cost the link's thread 3 µs more per message)."""
        with self._lock:
            sizes = self._db.execute("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?)) RETURNING size",
                                     (json.dumps(message_ids),)).fetchall()
            self._bytes -= sum(size for (size,) in sizes)

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
                    for name, v in self._db.execute("SELECT name, value FROM outbox_counters "
                                                    "WHERE name LIKE 'shed_%'")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
