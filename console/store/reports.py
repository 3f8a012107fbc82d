"""Reports from the per-minute aggregates: defect rate per unit by hour, shift and day; the p_defect distribution of
this week against last (drift: a model meeting parts it was not trained on shows here first); latency percentiles.

Aggregates are kept far longer than raw results (``retention.aggregates_days``), so reports reach back months. Hours,
shifts and days are local time (the plant's clock). Latency percentiles come from the histogram buckets, so each is
the upper bound of the bucket it falls in (1, 2, 4, ... ms): coarse, but mergeable across units and instances.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, func, select

from console.store import schema as s

BUCKET_LABELS = [f"<= {b} ms" for b in s.LATENCY_BOUNDS_MS] + [f"> {s.LATENCY_BOUNDS_MS[-1]} ms"]


def _minutes(engine: Engine, since: float, device_id: str | None) -> list[Any]:
    q = select(s.minutes).where(s.minutes.c.minute >= int(since // 60))
    if device_id:
        q = q.where(s.minutes.c.device_id == device_id)
    with engine.connect() as conn:
        return list(conn.execute(q).mappings())


def _shift_start(t: datetime, starts: list[int]) -> datetime:
    """The start of the shift ``t`` falls in; ``starts`` are minutes after midnight, sorted."""
    m = t.hour * 60 + t.minute
    before = [x for x in starts if x <= m]
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if before:
        return day + timedelta(minutes=before[-1])
    return day - timedelta(days=1) + timedelta(minutes=starts[-1])


RATE_SPANS = {"hour": 2 * 86400, "shift": 7 * 86400, "day": 30 * 86400}


def defect_rate(engine: Engine, *, by: str, now: float | None = None, device_id: str | None = None,
                shift_starts: tuple[str, ...] = ("06:00", "14:00", "22:00")) -> list[dict[str, Any]]:
    """Rows of (period start, unit, frames, defective, rate), oldest first. ``by``: hour (48 h), shift (7 days),
    day (30 days)."""
    now = time.time() if now is None else now
    span = RATE_SPANS[by]
    starts = sorted(int(x[:2]) * 60 + int(x[3:]) for x in shift_starts)
    totals: dict[tuple[datetime, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in _minutes(engine, now - span, device_id):
        t = datetime.fromtimestamp(r["minute"] * 60)
        period = (t.replace(minute=0, second=0, microsecond=0) if by == "hour"
                  else t.replace(hour=0, minute=0, second=0, microsecond=0) if by == "day"
                  else _shift_start(t, starts))
        agg = totals[(period, r["device_id"])]
        agg[0] += r["frames"]
        agg[1] += r["defective"]
    return [{"period": p.strftime("%Y-%m-%d %H:%M"), "unit": u, "frames": f, "defective": d,
             "rate": round(d / f, 4) if f else None} for (p, u), (f, d) in sorted(totals.items())]


PART_SPANS = {"hour": 2 * 86400, "shift": 14 * 86400, "day": 60 * 86400, "week": 26 * 7 * 86400}


def zone(name: str) -> tzinfo | None:
    """The plant's time zone (``web.time_zone``); None: the console machine's own."""
    return ZoneInfo(name) if name else None


def _period(t: datetime, by: str, starts: list[int]) -> datetime:
    if by == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if by == "shift":
        return _shift_start(t, starts)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday()) if by == "week" else day


def parts(engine: Engine, *, by: str, now: float | None = None, device_id: str | None = None,
          shift_starts: tuple[str, ...] = ("06:00", "14:00", "22:00"), tz: tzinfo | None = None,
          per_model: bool = False) -> list[dict[str, Any]]:
    """Parts judged, newest period first: per period (``by``: hour over 48 h, shift over 14 days, day over 60,
    week over 26 weeks, in the plant's time zone ``tz``), unit, and with ``per_model`` model version: parts, each
    verdict, the NG share and first-pass yield (OK of all parts). Read from the quarter-hour counts."""
    now = time.time() if now is None else now
    starts = sorted(int(x[:2]) * 60 + int(x[3:]) for x in shift_starts)
    pq = s.part_quarters.c
    counted = ("parts", *s.VERDICTS)
    q = select(pq.device_id, pq.model, pq.model_sha256, pq.quarter, *(pq[c] for c in counted)).where(
        pq.quarter >= int((now - PART_SPANS[by]) // 900))
    if device_id:
        q = q.where(pq.device_id == device_id)
    totals: dict[tuple[datetime, str, str, str], list[int]] = defaultdict(lambda: [0] * len(counted))
    periods: dict[int, datetime] = {}  # a quarter's period, worked out once for every unit and model
    with engine.connect() as conn:
        for device, model, sha, quarter, *counts in conn.execute(q):
            period = periods.get(quarter)
            if period is None:
                period = periods[quarter] = _period(datetime.fromtimestamp(quarter * 900, tz), by, starts)
            agg = totals[(period, device, model if per_model else "", sha[:12] if per_model else "")]
            for i, c in enumerate(counts):
                agg[i] += c
    out = []
    for (period, unit, model, sha), (n, *counts) in sorted(totals.items(), key=lambda kv: kv[0], reverse=True):
        by_verdict = dict(zip(s.VERDICTS, counts, strict=True))
        out.append({"period": period.strftime("%Y-%m-%d %H:%M"), "unit": unit,
                    **({"model": model, "version": sha} if per_model else {}), "parts": n, **by_verdict,
                    "ng_rate": round(by_verdict["ng"] / n, 4) if n else None,
                    "fpy": round(by_verdict["ok"] / n, 4) if n else None})
    return out


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of ``hits`` in ``n``: honest at 0 hits and at small n, where a quality lead's
    sample of reviews mostly is (0 escapes in 30 reviews still allows up to 11 %)."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def quality(engine: Engine, *, device_id: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """Reviewed truth as measured quality, per unit and model version: the false-reject rate (NG parts a person
    reviewed as good) and the escape rate (OK parts, sampled, reviewed as defective), each with its 95 % interval
    and the number of reviews behind it. A part's review is its deciding frame's."""
    p, r = s.parts, s.reviews
    q = (select(p.c.device_id, p.c.model, p.c.model_sha256, p.c.verdict, r.c.truth, func.count().label("n"))
         .join(r, and_(r.c.device_id == p.c.device_id, r.c.frame_id == p.c.frame_id))
         .where(r.c.truth.is_not(None), p.c.verdict.in_(("ok", "ng")))
         .group_by(p.c.device_id, p.c.model, p.c.model_sha256, p.c.verdict, r.c.truth))
    if device_id:
        q = q.where(p.c.device_id == device_id)
    if since is not None:
        q = q.where(p.c.ts >= since)
    cells: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with engine.connect() as conn:
        for row in conn.execute(q):
            cells[(row.device_id, row.model, row.model_sha256)][f"{row.verdict}_{row.truth}"] += int(row.n)
    out = []
    for (unit, model, sha), c in sorted(cells.items()):
        ng_n, ok_n = c["ng_good"] + c["ng_defective"], c["ok_good"] + c["ok_defective"]
        out.append({"unit": unit, "model": model, "version": sha[:12],
                    "ng_reviewed": ng_n, "false_rejects": c["ng_good"],
                    "false_reject_rate": c["ng_good"] / ng_n if ng_n else None,
                    "false_reject_ci": wilson(c["ng_good"], ng_n),
                    "ok_reviewed": ok_n, "escapes": c["ok_defective"],
                    "escape_rate": c["ok_defective"] / ok_n if ok_n else None,
                    "escape_ci": wilson(c["ok_defective"], ok_n)})
    return out


def drift(engine: Engine, *, now: float | None = None, device_id: str | None = None) -> dict[str, Any]:
    """The p_defect histogram (10 bins) of the last 7 days and of the 7 before, as shares of frames."""
    now = time.time() if now is None else now
    this, last = [0] * s.P_BINS, [0] * s.P_BINS
    for r in _minutes(engine, now - 14 * 86400, device_id):
        target = this if r["minute"] * 60 >= now - 7 * 86400 else last
        for i in range(s.P_BINS):
            target[i] += r[f"p{i}"]

    def share(h: list[int]) -> list[float]:
        n = sum(h)
        return [round(x / n, 4) if n else 0.0 for x in h]

    return {"bins": [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(s.P_BINS)], "this_week": share(this),
            "last_week": share(last), "frames": [sum(this), sum(last)]}


def latency(engine: Engine, *, now: float | None = None, hours: float = 24.0) -> list[dict[str, Any]]:
    """Per unit, over the last ``hours``: frames, mean, and p50/p95/p99 (bucket upper bounds) of
    preprocess + inference + postprocess."""
    now = time.time() if now is None else now
    n_buckets = len(s.LATENCY_BOUNDS_MS) + 1
    cols = [func.sum(s.minutes.c[f"l{i}"]) for i in range(n_buckets)]
    with engine.connect() as conn:
        rows = conn.execute(select(s.minutes.c.device_id, func.sum(s.minutes.c.frames),
                                   func.sum(s.minutes.c.latency_sum_ms), *cols)
                            .where(s.minutes.c.minute >= int((now - hours * 3600) // 60))
                            .group_by(s.minutes.c.device_id).order_by(s.minutes.c.device_id)).all()
    out = []
    for device, frames, total_ms, *buckets in rows:
        counts = [int(b or 0) for b in buckets]

        def pct(q: float, counts: list[int] = counts, n: int = int(frames or 0)) -> str:
            seen = 0
            for i, c in enumerate(counts):
                seen += c
                if n and seen >= q * n:
                    return BUCKET_LABELS[i]
            return ""

        out.append({"unit": device, "frames": int(frames or 0),
                    "mean_ms": round(float(total_ms) / frames, 2) if frames else None,
                    "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)})
    return out
