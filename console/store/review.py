"""The review queue: people say whether the units' calls were right, and the reviewed frames become a data set.

Items are the alerts a unit raised on a frame (defect, low confidence) with their snapshot. A verdict is ``right``,
``wrong`` (with the truth: the part was good, or defective) or ``unsure``; it is stored centrally with the image the
console holds (marked reviewed, so retention keeps it longest), and sent to the unit as ``cmd/feedback`` (the unit
keeps it with the frame while it still buffers it; its reply is recorded either way, in the audit).

``export`` writes reviewed frames as ``good/`` and ``defect/`` by their reviewed truth, split by time (the newest
share held out for evaluation), in the layout ``defect-convert train`` and ``--eval`` take, with a manifest CSV.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, case, desc, func, select, update

from console import images
from console.store import schema as s

VERDICTS = {"right": None, "wrong_good": "good", "wrong_defective": "defective", "unsure": None}
ALERT_KINDS = ("defect", "low_confidence")
REVIEWED_KINDS = (*ALERT_KINDS, "sample")  # sample: a confident call the unit sent with its snapshot


def truth_of(verdict: str, predicted: str | None) -> str | None:
    """What the part really was, by the verdict: the call itself when it was right."""
    if verdict == "right":
        return predicted if predicted in ("good", "defective") else None
    return VERDICTS[verdict]


def _by_state(q: Any, state: str) -> Any:
    """Only the waiting items, only the reviewed ones, or all."""
    r = s.reviews
    return q.where(r.c.verdict.is_(None)) if state == "waiting" else \
        q.where(r.c.verdict.is_not(None)) if state == "reviewed" else q


def _items_query(*, device_id: str | None, kind: str | None, model: str | None, since: float | None,
                 state: str, frame_id: str | None = None) -> Any:
    snap, heat, whole = (s.frame_images.alias(n) for n in ("snap", "heat", "whole"))
    a, r = s.alerts, s.reviews
    q = (select(a.c.device_id, a.c.frame_id, a.c.kind, a.c.ts, a.c.p_defect, a.c.payload, a.c.dedup_key,
                snap.c.sha256.label("snapshot"), heat.c.sha256.label("heatmap"), whole.c.sha256.label("frame"),
                r.c.verdict, r.c.truth, r.c.user.label("reviewer"), r.c.ts.label("reviewed_at"), r.c.note)
         .join(snap, and_(snap.c.device_id == a.c.device_id, snap.c.frame_id == a.c.frame_id,
                          snap.c.kind == "snapshot"))
         .outerjoin(heat, and_(heat.c.device_id == a.c.device_id, heat.c.frame_id == a.c.frame_id,
                               heat.c.kind == "gradcam"))
         .outerjoin(whole, and_(whole.c.device_id == a.c.device_id, whole.c.frame_id == a.c.frame_id,
                                whole.c.kind == "frame"))
         .outerjoin(r, and_(r.c.device_id == a.c.device_id, r.c.frame_id == a.c.frame_id))
         .where(a.c.kind.in_(ALERT_KINDS)))
    if device_id:
        q = q.where(a.c.device_id == device_id)
    if frame_id:
        q = q.where(a.c.frame_id == frame_id)
    if kind:
        q = q.where(a.c.kind == kind)
    if model:
        q = q.where(a.c.payload.contains(f'"model":{json.dumps(model)}'))
    if since is not None:
        q = q.where(a.c.ts >= since).where(a.c.ts < since + 86400)
    return _by_state(q, state)


def _samples_query(*, device_id: str | None, model: str | None, since: float | None, state: str,
                   frame_id: str | None = None) -> Any:
    """Snapshots a unit sent without an alert (a sampled confident call), with the call from its stored result, or
    from the part it decided (a unit judging parts samples OK parts, and may send no per-frame results)."""
    snap, heat, whole = (s.frame_images.alias(n) for n in ("snap", "heat", "whole"))
    a, r, res, pt = s.alerts, s.reviews, s.results, s.parts
    ts = func.coalesce(res.c.ts, pt.c.ts, snap.c.received)
    part_label = case((pt.c.verdict == "ok", "good"), (pt.c.verdict == "ng", "defective"))
    by_model = func.coalesce(res.c.model, pt.c.model)
    q = (select(snap.c.device_id, snap.c.frame_id, ts.label("ts"), func.coalesce(res.c.p_defect, pt.c.p_defect)
                .label("p_defect"), func.coalesce(res.c.label, part_label).label("predicted"), by_model.label("model"),
                snap.c.sha256.label("snapshot"), heat.c.sha256.label("heatmap"),
                whole.c.sha256.label("frame"), r.c.verdict, r.c.truth, r.c.user.label("reviewer"),
                r.c.ts.label("reviewed_at"), r.c.note)
         .outerjoin(a, and_(a.c.device_id == snap.c.device_id, a.c.frame_id == snap.c.frame_id))
         .outerjoin(res, and_(res.c.device_id == snap.c.device_id, res.c.frame_id == snap.c.frame_id))
         .outerjoin(pt, and_(pt.c.device_id == snap.c.device_id, pt.c.frame_id == snap.c.frame_id))
         .outerjoin(heat, and_(heat.c.device_id == snap.c.device_id, heat.c.frame_id == snap.c.frame_id,
                               heat.c.kind == "gradcam"))
         .outerjoin(whole, and_(whole.c.device_id == snap.c.device_id, whole.c.frame_id == snap.c.frame_id,
                                whole.c.kind == "frame"))
         .outerjoin(r, and_(r.c.device_id == snap.c.device_id, r.c.frame_id == snap.c.frame_id))
         .where(snap.c.kind == "snapshot").where(a.c.dedup_key.is_(None)))
    if device_id:
        q = q.where(snap.c.device_id == device_id)
    if frame_id:
        q = q.where(snap.c.frame_id == frame_id)
    if model:
        q = q.where(by_model == model)
    if since is not None:
        q = q.where(ts >= since).where(ts < since + 86400)
    return _by_state(q, state)


def _order(state: str, ts: Any, key: Any, reviewed_at: Any) -> tuple[Any, ...]:
    """Oldest waiting first, so the queue drains in the order the line made it; the latest reviewed first, so a
    reviewer sees what was just decided (alerts a unit sent in the same millisecond share a ts); newest first for
    all, the waiting order reversed."""
    return (ts, key) if state == "waiting" else (desc(reviewed_at),) if state == "reviewed" else (desc(ts), desc(key))


def queue(engine: Engine, *, device_id: str | None = None, kind: str | None = None, model: str | None = None,
          since: float | None = None, state: str = "waiting", limit: int = 20,
          frame_id: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Items (alerts and sampled calls) in ``_order``, and how many match."""
    rows: list[dict[str, Any]] = []
    total = 0
    with engine.connect() as conn:
        if kind != "sample":
            q = _items_query(device_id=device_id, kind=kind, model=model, since=since, state=state,
                             frame_id=frame_id)
            order = _order(state, s.alerts.c.ts, s.alerts.c.dedup_key, s.reviews.c.ts)
            for x in conn.execute(q.order_by(*order).limit(limit)).mappings():
                row = dict(x)
                payload = json.loads(row.pop("payload"))
                rows.append({**row, "predicted": payload.get("label"), "model": payload.get("model")})
            total += int(conn.execute(select(func.count()).select_from(q.subquery())).scalar_one())
        if kind in (None, "", "sample"):
            q = _samples_query(device_id=device_id, model=model, since=since, state=state, frame_id=frame_id)
            sub = q.subquery()
            order = _order(state, sub.c.ts, sub.c.frame_id, sub.c.reviewed_at)
            rows += [{**dict(x), "kind": "sample", "dedup_key": None}
                     for x in conn.execute(select(sub).order_by(*order).limit(limit)).mappings()]
            total += int(conn.execute(select(func.count()).select_from(sub)).scalar_one())
    rows.sort(key=lambda x: x["reviewed_at" if state == "reviewed" else "ts"], reverse=state != "waiting")
    return rows[:limit], total


def record(engine: Engine, *, device_id: str, frame_id: str, verdict: str, note: str, user: str,
           request_id: str | None) -> dict[str, Any]:
    """Store one verdict (again: the newest wins); the reviewed image is kept longest."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
    found, _ = queue(engine, device_id=device_id, frame_id=frame_id, state="all", limit=1)
    with engine.connect() as conn:
        sha = conn.execute(select(s.results.c.model_sha256).where(and_(
            s.results.c.device_id == device_id, s.results.c.frame_id == frame_id))).scalar()
    if not found:
        raise LookupError("no such item to review")
    item = found[0]
    truth = truth_of(verdict, item["predicted"])
    values = {"verdict": verdict, "truth": truth, "predicted": item["predicted"], "p_defect": item["p_defect"],
              "model": item["model"], "model_sha256": sha, "sha256": item["snapshot"], "note": note[:1000],
              "user": user, "ts": time.time(), "feedback_request_id": request_id}
    with engine.begin() as conn:
        done = conn.execute(update(s.reviews).where(and_(s.reviews.c.device_id == device_id,
                                                         s.reviews.c.frame_id == frame_id)).values(**values))
        if not done.rowcount:
            conn.execute(s.reviews.insert().values(device_id=device_id, frame_id=frame_id, **values))
        shas = [x for x in (item["snapshot"], item["heatmap"], item.get("frame")) if x]
        conn.execute(update(s.images).where(s.images.c.sha256.in_(shas)).values(reviewed=True))
    return {**item, **values}


def export(engine: Engine, images_root: Path, out: Path, *, holdout: float = 0.2) -> dict[str, int]:
    """Reviewed frames with a truth into ``out/train`` and ``out/eval`` (the newest ``holdout`` share), each with
    ``good/`` and ``defect/``, and ``out/manifest.csv`` (with the part a frame decided, and its verdict, when it was
    a part's deciding frame). Returns how many frames went where."""
    r_, p_ = s.reviews, s.parts
    with engine.connect() as conn:
        rows = [dict(x) for x in conn.execute(
            select(r_, p_.c.part_id, p_.c.verdict.label("part_verdict"))
            .outerjoin(p_, and_(p_.c.device_id == r_.c.device_id, p_.c.frame_id == r_.c.frame_id))
            .where(r_.c.truth.is_not(None)).where(r_.c.sha256.is_not(None)).order_by(r_.c.ts)).mappings()]
    rows = [r for r in rows if images.path_of(images_root, r["sha256"]).is_file()]
    cut = len(rows) - round(len(rows) * holdout)
    counts = {"train_good": 0, "train_defect": 0, "eval_good": 0, "eval_defect": 0}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "file", "frame_id", "unit", "model", "model_sha256", "p_defect", "predicted", "truth",
                    "verdict", "reviewer", "reviewed_at", "part_id", "part_verdict"])
        for i, r in enumerate(rows):
            split = "train" if i < cut else "eval"
            cls = "defect" if r["truth"] == "defective" else "good"
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{r['frame_id']}.jpg"
            shutil.copyfile(images.path_of(images_root, r["sha256"]), folder / name)
            counts[f"{split}_{cls}"] += 1
            w.writerow([split, f"{split}/{cls}/{name}", r["frame_id"], r["device_id"], r["model"] or "",
                        r["model_sha256"] or "", r["p_defect"], r["predicted"], r["truth"], r["verdict"], r["user"],
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["ts"])), r["part_id"] or "",
                        r["part_verdict"] or ""])
    return counts
