"""What the pages read. Each function returns plain dicts (the templates escape every value they show)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import Engine, and_, desc, func, select

from console.store import schema as s


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def fleet(engine: Engine, now: float | None = None, device_id: str | None = None) -> list[dict[str, Any]]:
    """Every unit (or one) at a glance: availability, model, camera, fps and p95 (last metrics), the last hour's parts
    and defect rate, outbox depth, last alert."""
    now = time.time() if now is None else now
    hour = int((now - 3600) // 60)
    with engine.connect() as conn:
        units = conn.execute(select(s.units).where(s.units.c.device_id == device_id) if device_id
                             else select(s.units).order_by(s.units.c.device_id)).mappings().all()
        rates = {r.device_id: (int(r.frames), int(r.defective)) for r in conn.execute(
            select(s.minutes.c.device_id, func.sum(s.minutes.c.frames).label("frames"),
                   func.sum(s.minutes.c.defective).label("defective"))
            .where(s.minutes.c.minute >= hour).group_by(s.minutes.c.device_id))}
        parts = {r.device_id: dict(r._mapping) for r in conn.execute(
            select(s.part_minutes.c.device_id, *(func.sum(s.part_minutes.c[c]).label(c)
                                                for c in ("parts", *s.VERDICTS)))
            .where(s.part_minutes.c.minute >= hour).group_by(s.part_minutes.c.device_id))}
    rows = []
    for u in units:
        status, metrics = _json(u["status"]), _json(u["metrics"])
        model = status.get("model") or {}
        frames, defective = rates.get(u["device_id"], (0, 0))
        rows.append({
            "device_id": u["device_id"], "online": u["online"], "last_seen": u["last_seen"],
            "model": model.get("name"), "quantization": model.get("quantization"),
            "sha256": str(model.get("sha256") or "")[:12], "camera": (status.get("camera") or {}).get("state"),
            "fps": metrics.get("fps"), "p95_ms": ((metrics.get("latency_ms") or {}).get("inference") or {}).get("p95"),
            "outbox": (metrics.get("outbox") or {}).get("depth"),
            "frames_hour": frames, "defect_rate_hour": defective / frames if frames else None,
            "parts_hour": part_counts(parts.get(u["device_id"])),
            "last_alert_at": u["last_alert_at"], "last_alert_kind": u["last_alert_kind"],
        })
    return rows


def part_counts(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Parts and their verdicts, with the shares a quality lead reads: NG and first-pass yield (OK of all parts:
    an unsure or missed part has not passed)."""
    if not row or not row.get("parts"):
        return None
    n = int(row["parts"])
    counts = {v: int(row.get(v) or 0) for v in s.VERDICTS}
    return {"parts": n, **counts, "ng_rate": counts["ng"] / n, "fpy": counts["ok"] / n}


def unit_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [d for (d,) in conn.execute(select(s.units.c.device_id).order_by(s.units.c.device_id))]


def unit(engine: Engine, device_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(s.units).where(s.units.c.device_id == device_id)).mappings().first()
    if row is None:
        return None
    return {**row, "status": _json(row["status"]), "metrics": _json(row["metrics"])}


def throughput(engine: Engine, device_id: str, minutes: int = 60, now: float | None = None) -> list[list[float]]:
    """A unit's frames per second, minute by minute over the last ``minutes``, from the per-minute aggregates: the
    throughput chart's history when the page opens (it was empty until the next metrics). A minute is divided by
    the seconds of it the unit was heard in: the one under way, the one it started in."""
    now = time.time() if now is None else now
    m = s.minutes.c
    with engine.connect() as conn:
        rows = conn.execute(select(m.minute, func.sum(m.frames)).where(
            m.device_id == device_id, m.minute >= int((now - minutes * 60) // 60)).group_by(m.minute)
            .order_by(m.minute)).all()
        first = conn.execute(select(s.units.c.first_seen).where(s.units.c.device_id == device_id)).scalar()
    out = []
    for minute, frames in rows:  # a minute counts from when the unit was first heard, and up to now
        start, end = max(minute * 60, first or 0.0), min(minute * 60 + 60, now)
        out.append([float(minute * 60), round(int(frames) / max(1.0, end - start), 3)])
    return out


def latest_results(engine: Engine, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """A unit's newest results; a frame id's sequence orders the calls a unit makes in the same millisecond."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(s.results.c.frame_id, s.results.c.ts, s.results.c.label, s.results.c.p_defect,
                   s.results.c.confidence, s.results.c.low_confidence, s.results.c.model)
            .where(s.results.c.device_id == device_id)
            .order_by(desc(s.results.c.ts), desc(s.results.c.frame_id)).limit(limit)).mappings()]


def alerts(engine: Engine, *, device_id: str | None = None, kind: str | None = None, since: float | None = None,
           until: float | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """A page of alerts, newest first, with their snapshot and heatmap (sha256 or None), and the total count."""
    conds = []
    if device_id:
        conds.append(s.alerts.c.device_id == device_id)
    if kind:
        conds.append(s.alerts.c.kind == kind)
    if since is not None:
        conds.append(s.alerts.c.ts >= since)
    if until is not None:
        conds.append(s.alerts.c.ts < until)
    where = and_(True, *conds)
    snap, heat = s.frame_images.alias("snap"), s.frame_images.alias("heat")
    q = (select(s.alerts.c.dedup_key, s.alerts.c.device_id, s.alerts.c.kind, s.alerts.c.frame_id, s.alerts.c.ts,
                s.alerts.c.p_defect, snap.c.sha256.label("snapshot"), heat.c.sha256.label("heatmap"))
         .outerjoin(snap, and_(snap.c.device_id == s.alerts.c.device_id, snap.c.frame_id == s.alerts.c.frame_id,
                               snap.c.kind == "snapshot"))
         .outerjoin(heat, and_(heat.c.device_id == s.alerts.c.device_id, heat.c.frame_id == s.alerts.c.frame_id,
                               heat.c.kind == "gradcam"))
         .where(where).order_by(desc(s.alerts.c.ts), s.alerts.c.dedup_key).limit(limit).offset(offset))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
        total = int(conn.execute(select(func.count()).select_from(s.alerts).where(where)).scalar_one())
    return rows, total


def alert(engine: Engine, dedup_key: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(s.alerts).where(s.alerts.c.dedup_key == dedup_key)).mappings().first()
        if row is None:
            return None
        imgs = {r.kind: r.sha256 for r in conn.execute(
            select(s.frame_images.c.kind, s.frame_images.c.sha256).where(and_(
                s.frame_images.c.device_id == row["device_id"], s.frame_images.c.frame_id == row["frame_id"])))}
    return {**row, "payload": _json(row["payload"]), "snapshot": imgs.get("snapshot"), "heatmap": imgs.get("gradcam")}


def image_known(engine: Engine, sha256: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(s.images.c.sha256).where(s.images.c.sha256 == sha256)).first() is not None


def commands(engine: Engine, *, device_id: str | None = None, limit: int = 100, offset: int = 0,
             user: str | None = None, command: str | None = None) -> list[dict[str, Any]]:
    q = select(s.commands).order_by(desc(s.commands.c.ts)).limit(limit).offset(offset)
    for column, value in ((s.commands.c.device_id, device_id), (s.commands.c.user, user),
                          (s.commands.c.command, command)):
        if value:
            q = q.where(column == value)
    with engine.connect() as conn:
        return [{**r, "reply": _json(r["reply"])} for r in conn.execute(q).mappings()]


def command(engine: Engine, request_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        r = conn.execute(select(s.commands).where(s.commands.c.request_id == request_id)).mappings().first()
    return {**r, "reply": _json(r["reply"])} if r else None


def audit(engine: Engine, limit: int = 200, offset: int = 0, user: str | None = None,
          action: str | None = None) -> list[dict[str, Any]]:
    q = select(s.audit).order_by(desc(s.audit.c.id)).limit(limit).offset(offset)
    for column, value in ((s.audit.c.user, user), (s.audit.c.action, action)):
        if value:
            q = q.where(column == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def record_command(engine: Engine, user: str, device_id: str, name: str, args: dict[str, Any], *,
                   review_of: str | None = None) -> str:
    """A command a person sends, before it is published: who, to which unit, what; and, for a review's feedback, the
    review it tells the unit of. Returns its request id, which the unit's reply carries back to this row."""
    request_id = f"console-{secrets.token_hex(8)}"
    with engine.begin() as conn:
        conn.execute(s.commands.insert().values(request_id=request_id, ts=time.time(), user=user, device_id=device_id,
                                                command=name, args=json.dumps(args)))
        if review_of:
            conn.execute(s.reviews.update().where(s.reviews.c.device_id == device_id)
                         .where(s.reviews.c.frame_id == review_of).values(feedback_request_id=request_id))
    return request_id


NOT_SIGNED_IN = "(not signed in)"  # the audit's "who" of a login attempt: what was typed goes in the detail, quoted


def record(engine: Engine, user: str, action: str, detail: str) -> None:
    with engine.begin() as conn:
        conn.execute(s.audit.insert().values(ts=time.time(), user=user, action=action, detail=detail[:1000]))
