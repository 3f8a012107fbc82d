"""Writing what the historian heard: one transaction per batch, idempotent, so a redelivered message changes nothing.

MQTT QoS 1 delivers at least once, and the historian acknowledges a message only after its batch committed: after a
crash or a database outage the broker delivers again what was not acknowledged. Every write here is therefore keyed
(a result by device and frame id, an alert by its dedup key, an image by its sha256) and the per-minute aggregates
count only the results that were new, so nothing is lost and nothing is counted twice, across instances too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from console.store import schema as s
from contract import payloads, topics


@dataclass(frozen=True)
class Item:
    """One accepted message. ``what`` is the contract's (``contract.topics.Topic.what``)."""

    what: str
    device_id: str
    received: float
    message: payloads.Message | None = None  # result, alert, part (typed)
    raw: bytes = b""  # as sent: stored so for status, metrics, gradcam event, reply and part
    key: str | None = None  # frame id of an image, command of a reply
    online: bool | None = None  # available
    sha256: str = ""  # image
    size: int = 0  # image bytes


@dataclass
class Batch:
    items: list[Item] = field(default_factory=list)


def _insert(conn: Connection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _bins(p: float) -> int:
    return min(s.P_BINS - 1, int(p * s.P_BINS))


def _latency_bucket(ms: float) -> int:
    for i, bound in enumerate(s.LATENCY_BOUNDS_MS):
        if ms <= bound:
            return i
    return len(s.LATENCY_BOUNDS_MS)


def _latency(r: payloads.Result) -> float:
    t = r.timings_ms
    return float(t.get("preprocess", 0.0) + t.get("inference", 0.0) + t.get("postprocess", 0.0))


def write(engine: Engine, items: list[Item]) -> dict[str, int]:
    """Store ``items`` in one transaction; returns how many of each were new."""
    with engine.begin() as conn:
        return _write(conn, items)


def _write(conn: Connection, items: list[Item]) -> dict[str, int]:
    new: dict[str, int] = defaultdict(int)
    by_what: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_what[it.what].append(it)
    _touch_units(conn, items)
    if by_what["result"]:
        new["results"] = _results(conn, by_what["result"])
    if by_what["part"]:
        new["parts"] = _parts(conn, by_what["part"])
    for it in by_what["alert"]:
        a = it.message
        assert isinstance(a, payloads.Alert)
        ts = topics.epoch(a.ts)
        done = conn.execute(_insert(conn, s.alerts).values(
            dedup_key=a.dedup_key, device_id=it.device_id, kind=a.kind, frame_id=a.frame_id, ts=ts,
            p_defect=a.p_defect, payload=payloads.dumps(a).decode()).on_conflict_do_nothing())
        new["alerts"] += done.rowcount or 0
        conn.execute(update(s.units).where(s.units.c.device_id == it.device_id).where(
            func.coalesce(s.units.c.last_alert_at, 0) <= ts).values(last_alert_at=ts, last_alert_kind=a.kind))
    for what, kind in ((topics.SNAPSHOT, "snapshot"), (topics.FRAME, "frame"), ("gradcam_image", "gradcam")):
        for it in by_what[what]:
            conn.execute(_insert(conn, s.images).values(sha256=it.sha256, bytes=it.size, created=it.received,
                                                        reviewed=False).on_conflict_do_nothing())
            conn.execute(_insert(conn, s.frame_images).values(
                device_id=it.device_id, frame_id=it.key, kind=kind, sha256=it.sha256,
                received=it.received).on_conflict_do_nothing())
            new["images"] += 1
    for it in by_what[topics.AVAILABLE]:
        conn.execute(update(s.units).where(s.units.c.device_id == it.device_id).where(
            func.coalesce(s.units.c.available_at, 0) <= it.received).values(online=it.online,
                                                                            available_at=it.received))
        conn.execute(s.events.insert().values(device_id=it.device_id, kind="available", received=it.received,
                                              payload="online" if it.online else "offline"))
    for what, col in ((topics.STATUS, "status"), (topics.METRICS, "metrics")):
        for it in by_what[what]:
            conn.execute(update(s.units).where(s.units.c.device_id == it.device_id).values(
                {col: it.raw.decode(), f"{col}_at": it.received}))
    for it in by_what[topics.GRADCAM] + by_what[topics.REPLY]:
        body = json.loads(it.raw)
        request_id = body.get("request_id") if isinstance(body.get("request_id"), str) else None
        conn.execute(s.events.insert().values(device_id=it.device_id, kind=it.what, received=it.received,
                                              request_id=request_id, payload=it.raw.decode()))
        if it.what == topics.REPLY and request_id:
            conn.execute(update(s.commands).where(and_(s.commands.c.request_id == request_id,
                                                       s.commands.c.device_id == it.device_id)).values(
                reply_ok=bool(body.get("ok")), reply=it.raw.decode(), replied_at=it.received))
    return dict(new)


def _touch_units(conn: Connection, items: list[Item]) -> None:
    seen: dict[str, tuple[float, float]] = {}
    for it in items:
        lo, hi = seen.get(it.device_id, (it.received, it.received))
        seen[it.device_id] = (min(lo, it.received), max(hi, it.received))
    for device, (first, last) in seen.items():
        stmt = _insert(conn, s.units).values(device_id=device, first_seen=first, last_seen=last)
        conn.execute(stmt.on_conflict_do_update(index_elements=["device_id"], set_={
            "last_seen": func.max(s.units.c.last_seen, stmt.excluded.last_seen)
            if conn.dialect.name == "sqlite" else func.greatest(s.units.c.last_seen, stmt.excluded.last_seen)}))


def _results(conn: Connection, items: list[Item]) -> int:
    rows: list[dict[str, Any]] = []
    for it in items:
        r = it.message
        assert isinstance(r, payloads.Result)
        rows.append({"device_id": it.device_id, "frame_id": r.frame_id, "ts": topics.epoch(r.ts), "label": r.label,
                     "p_defect": r.p_defect, "confidence": r.confidence, "low_confidence": r.low_confidence,
                     "model": r.model.name, "model_sha256": r.model.sha256, "latency_ms": _latency(r),
                     "defective": r.defective})
    inserted = _insert_new(conn, rows)
    agg: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in rows:
        if (row["device_id"], row["frame_id"]) not in inserted:
            continue  # a redelivery: already counted
        key = (row["device_id"], int(row["ts"] // 60), row["model_sha256"])
        a = agg.setdefault(key, {"model": row["model"], "frames": 0, "defective": 0, "low_confidence": 0,
                                 "latency_sum_ms": 0.0, **{f"p{i}": 0 for i in range(s.P_BINS)},
                                 **{f"l{i}": 0 for i in range(len(s.LATENCY_BOUNDS_MS) + 1)}})
        a["frames"] += 1
        a["defective"] += int(row["defective"])
        a["low_confidence"] += int(row["low_confidence"])
        a["latency_sum_ms"] += row["latency_ms"]
        a[f"p{_bins(row['p_defect'])}"] += 1
        a[f"l{_latency_bucket(row['latency_ms'])}"] += 1
    if agg:
        counted = [c for c in next(iter(agg.values())) if c != "model"]
        stmt = _insert(conn, s.minutes)
        stmt = stmt.on_conflict_do_update(index_elements=["device_id", "minute", "model_sha256"],
                                          set_={c: s.minutes.c[c] + stmt.excluded[c] for c in counted})
        conn.execute(stmt, [{"device_id": d, "minute": m, "model_sha256": sha, **a}
                            for (d, m, sha), a in agg.items()])
    return len(inserted)


def _parts(conn: Connection, items: list[Item]) -> int:
    """Store the parts not stored yet (a unit delivers each at least once: keyed by its part id) and count the new
    ones into ``part_minutes`` and ``part_quarters``."""
    new: list[tuple[str, float, payloads.Part]] = []
    for it in items:
        p = it.message
        assert isinstance(p, payloads.Part)
        ts = topics.epoch(p.ts)
        done = conn.execute(_insert(conn, s.parts).values(
            device_id=it.device_id, part_id=p.part_id, seq=p.seq, ts=ts, trigger=p.trigger, verdict=p.verdict,
            p_defect=p.p_defect, frame_id=p.frame_id, model=p.model.name, model_sha256=p.model.sha256,
            payload=it.raw.decode()).on_conflict_do_nothing())
        if done.rowcount:  # else a redelivery: already counted
            new.append((it.device_id, ts, p))
    for table, period, seconds in ((s.part_minutes, "minute", 60), (s.part_quarters, "quarter", 900)):
        agg: dict[tuple[str, int, str], dict[str, Any]] = {}
        for device_id, ts, p in new:
            a = agg.setdefault((device_id, int(ts // seconds), p.model.sha256),
                               {"model": p.model.name, "parts": 0, **dict.fromkeys(s.VERDICTS, 0)})
            a["parts"] += 1
            a[p.verdict] += 1
        if agg:
            stmt = _insert(conn, table)
            stmt = stmt.on_conflict_do_update(index_elements=["device_id", period, "model_sha256"], set_={
                c: table.c[c] + stmt.excluded[c] for c in ("parts", *s.VERDICTS)})
            conn.execute(stmt, [{"device_id": d, period: m, "model_sha256": sha, **a}
                                for (d, m, sha), a in agg.items()])
    return len(new)


_RESULT_COLUMNS = ("device_id", "frame_id", "ts", "label", "p_defect", "confidence", "low_confidence", "model",
                   "model_sha256", "latency_ms")


def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert the results not stored yet; return the keys of those that were new.

    Through the driver: SQLAlchemy's per-row parameter handling cost about 90 us a result here, more than the
    database itself. SQLite answers each INSERT OR IGNORE with its row count (in C, a few us); PostgreSQL takes a
    multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING, which names the rows it inserted, per 1,000 rows.
    """
    names = ", ".join(_RESULT_COLUMNS)
    values = [tuple(r[c] for c in _RESULT_COLUMNS) for r in rows]
    raw = conn.connection.driver_connection
    assert raw is not None
    if conn.dialect.name == "sqlite":
        sql = f"INSERT OR IGNORE INTO results ({names}) VALUES ({', '.join('?' * len(_RESULT_COLUMNS))})"
        cur = raw.cursor()
        new = set()
        for v in values:
            cur.execute(sql, v)
            if cur.rowcount == 1:
                new.add((v[0], v[1]))
        return new
    new = set()
    one = f"({', '.join(['%s'] * len(_RESULT_COLUMNS))})"
    with raw.cursor() as cur:
        for i in range(0, len(values), 1000):  # one statement per 1,000 rows: 10,000 parameters of PostgreSQL's 65,535
            chunk = values[i:i + 1000]
            cur.execute(f"INSERT INTO results ({names}) VALUES {', '.join([one] * len(chunk))} "
                        "ON CONFLICT DO NOTHING RETURNING device_id, frame_id", [x for v in chunk for x in v])
            new.update((d, f) for d, f in cur.fetchall())
    return new


def count(engine: Engine, instance: str, deltas: dict[str, int]) -> None:
    """Add to this instance's ingest counters (received, stored, rejected_<reason>, ...)."""
    if not deltas:
        return
    with engine.begin() as conn:
        stmt = _insert(conn, s.counters)
        stmt = stmt.on_conflict_do_update(index_elements=["instance", "name"],
                                          set_={"value": s.counters.c.value + stmt.excluded.value})
        conn.execute(stmt, [{"instance": instance, "name": k, "value": v} for k, v in deltas.items()])


def counters(engine: Engine) -> dict[str, int]:
    """Every instance's counters, summed."""
    with engine.connect() as conn:
        rows = conn.execute(select(s.counters.c.name, func.sum(s.counters.c.value)).group_by(s.counters.c.name))
        return {name: int(v) for name, v in rows}
