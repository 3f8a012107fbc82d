"""Rollouts: one release sent to a set of units in waves, a canary first, each wave growing by ``factor``, and
stopped the moment a unit of it fails.

:func:`step` is the whole driver, called every few seconds by the console (and by the tests with their own clock):
it reads each unit's release state from the unit's retained status, which the historian keeps, and sends what the
wave needs: ``cmd/release`` to a unit waiting, ``cmd/promote`` to a unit whose shadow run passed the gates (when the
rollout promotes by itself). A wave is over when all its units are promoted and done being watched; then the next one
starts. A unit that reports ``failed``, ``rejected`` or ``rolled_back`` aborts the rollout: no further wave, and the
reason says which unit and why. Each command is claimed in the store before it is sent (an update that only one
console of several can win), so consoles sharing a PostgreSQL never send one twice.
"""

from __future__ import annotations

import fnmatch
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select, update

from console.store import schema as s

Send = Callable[[str, str, dict[str, Any], str], None]  # (device id, command, args, who)
FAILED = ("failed", "rejected", "rolled_back")


def waves(count: int, canary: int, factor: float) -> list[int]:
    """Sizes of the waves for ``count`` units: ``canary``, then each ``factor`` times the one before."""
    sizes: list[int] = []
    size = float(max(1, canary))
    while sum(sizes) < count:
        sizes.append(min(round(size), count - sum(sizes)))
        size *= factor
    return sizes


def create(engine: Engine, *, model: str, version: int | None, units: str, canary: int, factor: float,
           auto_promote: bool, min_compared: int, min_agreement: float, user: str, min_reviewed: int = 0,
           max_inference_ms: float = 0.0, now: float | None = None) -> str:
    """A new rollout to the known units matching ``units``; ValueError when none does."""
    now = time.time() if now is None else now
    patterns = [p.strip() for p in units.split(",") if p.strip()]
    with engine.begin() as conn:
        known = [d for (d,) in conn.execute(select(s.units.c.device_id).order_by(s.units.c.device_id))]
        chosen = [d for d in known if any(fnmatch.fnmatchcase(d, p) for p in patterns)]
        if not chosen:
            raise ValueError(f"no known unit matches {units!r}")
        rollout_id = secrets.token_hex(6)
        conn.execute(s.rollouts.insert().values(
            id=rollout_id, model=model, version=version, units=",".join(patterns), canary=canary, factor=factor,
            auto_promote=auto_promote, min_compared=min_compared, min_agreement=min_agreement,
            min_reviewed=min_reviewed, max_inference_ms=max_inference_ms, state="running",
            reason="", wave=0, created_by=user, created_at=now, updated_at=now))
        rows, start = [], 0
        for wave, size in enumerate(waves(len(chosen), canary, factor)):
            rows += [{"rollout_id": rollout_id, "device_id": d, "wave": wave, "state": "waiting", "reason": "",
                      "updated_at": now} for d in chosen[start:start + size]]
            start += size
        conn.execute(s.rollout_units.insert(), rows)
    return rollout_id


def listing(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(s.rollouts).order_by(s.rollouts.c.created_at.desc())
                                              .limit(limit)).mappings()]


def get(engine: Engine, rollout_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        r = conn.execute(select(s.rollouts).where(s.rollouts.c.id == rollout_id)).mappings().first()
        if r is None:
            return None
        u = s.rollout_units.c
        units = [{**row, "shadow": json.loads(row["shadow"]) if row["shadow"] else None} for row in conn.execute(
            select(s.rollout_units).where(u.rollout_id == rollout_id).order_by(u.wave, u.device_id)).mappings()]
    for x in units:
        x["truth"] = reviewed_disagreements(engine, x["device_id"], (x["shadow"] or {}).get("disagreements") or [])
    return {**r, "members": units, "waves": max((x["wave"] for x in units), default=0) + 1}


def abort(engine: Engine, rollout_id: str, reason: str, now: float | None = None) -> bool:
    with engine.begin() as conn:
        return conn.execute(update(s.rollouts).where(s.rollouts.c.id == rollout_id)
                            .where(s.rollouts.c.state == "running")
                            .values(state="aborted", reason=reason[:500],
                                    updated_at=time.time() if now is None else now)).rowcount == 1


def _claim(engine: Engine, rollout_id: str, device_id: str, was: str, becomes: str, now: float) -> bool:
    """Move one unit's state from ``was`` to ``becomes``; True for the one caller (of several consoles) that did."""
    u = s.rollout_units.c
    with engine.begin() as conn:
        return conn.execute(update(s.rollout_units).where(u.rollout_id == rollout_id).where(u.device_id == device_id)
                            .where(u.state == was).values(state=becomes, updated_at=now)).rowcount == 1


def _reported(status: dict[str, Any], r: dict[str, Any]) -> dict[str, Any] | None:
    """The unit's release state when it is this rollout's release (its model, version, since the rollout began)."""
    rel = status.get("release") or {}
    if rel.get("name") != r["model"] or float(rel.get("since") or 0) < r["created_at"]:
        return None
    if r["version"] is not None and rel.get("version") not in (None, r["version"]):
        return None
    return rel


def reviewed_disagreements(engine: Engine, device_id: str, frames: list[str]) -> dict[str, int]:
    """Of the frames where the candidate called otherwise than the active model, those reviewed with a truth: how
    many the active model called right, and how many the candidate did (it called the opposite)."""
    if not frames:
        return {"reviewed": 0, "active_right": 0, "candidate_right": 0}
    r = s.reviews.c
    with engine.connect() as conn:
        rows = conn.execute(select(r.truth, r.predicted).where(r.device_id == device_id)
                            .where(r.frame_id.in_(frames)).where(r.truth.is_not(None))).all()
    active = sum(1 for truth, predicted in rows if truth == predicted)
    return {"reviewed": len(rows), "active_right": active, "candidate_right": len(rows) - active}


def _passes(engine: Engine, device_id: str, shadow: dict[str, Any] | None, r: dict[str, Any]) -> bool:
    """The gates: frames compared, agreement, no error, its inference p95 within the bound when one is set; and, when
    asked, reviewed truth on the disagreements no worse for the candidate than for the active model."""
    sh = shadow or {}
    if (sh.get("compared") or 0) < r["min_compared"] or (sh.get("agreement") or 0.0) < r["min_agreement"] \
            or sh.get("errors"):
        return False
    p95 = (sh.get("inference_ms") or {}).get("p95")
    if r["max_inference_ms"] and (p95 is None or p95 > r["max_inference_ms"]):
        return False
    if not r["min_reviewed"]:
        return True
    truth = reviewed_disagreements(engine, device_id, list(sh.get("disagreements") or []))
    return truth["reviewed"] >= r["min_reviewed"] and truth["candidate_right"] >= truth["active_right"]


def step(engine: Engine, send: Send, now: float | None = None) -> None:
    """Advance every running rollout by what its units reported (see the module's docstring)."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        running = [dict(r) for r in conn.execute(select(s.rollouts).where(s.rollouts.c.state == "running"))
                   .mappings()]
    for r in running:
        _step_one(engine, r, send, now)


def _step_one(engine: Engine, r: dict[str, Any], send: Send, now: float) -> None:
    u = s.rollout_units.c
    who = f"rollout {r['id']} ({r['created_by']})"
    with engine.connect() as conn:
        begun = [dict(x) for x in conn.execute(select(s.rollout_units).where(u.rollout_id == r["id"])
                                               .where(u.wave <= r["wave"])).mappings()]
        statuses = {d: json.loads(st) if st else {} for d, st in conn.execute(
            select(s.units.c.device_id, s.units.c.status).where(s.units.c.device_id.in_([x["device_id"]
                                                                                          for x in begun])))}
    args = {"name": r["model"], **({"version": r["version"]} if r["version"] is not None else {})}
    wave = [x for x in begun if x["wave"] == r["wave"]]
    settled = 0
    for x in begun:  # a unit of an earlier wave that rolls back later stops the rollout too
        device = x["device_id"]
        if x["state"] == "waiting":
            if _claim(engine, r["id"], device, "waiting", "sent", now):
                send(device, "release", args, who)
            continue
        rel = _reported(statuses.get(device, {}), r)
        if rel is None:
            continue
        state, shadow, reason = str(rel.get("state")), rel.get("shadow"), str(rel.get("reason") or "")
        if state in FAILED:
            _record(engine, x, state, reason, shadow, now)
            abort(engine, r["id"], f"{device}: {state}: {reason or 'no reason given'}", now)
            return
        if x["wave"] != r["wave"]:
            continue
        if state == "promoted" and "watching" not in rel:
            settled += 1
        if x["state"] == "promote_sent" and state == "shadow":
            continue  # the promotion is on its way
        _record(engine, x, state, reason, shadow, now)
        if state == "shadow" and r["auto_promote"] and _passes(engine, device, merged(x, shadow), r) and \
                _claim(engine, r["id"], device, "shadow", "promote_sent", now):
            send(device, "promote", {}, who)
    if settled == len(wave):
        with engine.begin() as conn:
            more = conn.execute(select(u.device_id).where(u.rollout_id == r["id"]).where(u.wave == r["wave"] + 1)
                                .limit(1)).first() is not None
            conn.execute(update(s.rollouts).where(s.rollouts.c.id == r["id"]).where(s.rollouts.c.wave == r["wave"])
                         .values(wave=r["wave"] + 1 if more else r["wave"], state="running" if more else "done",
                                 updated_at=now))


def merged(x: dict[str, Any], shadow: dict[str, Any] | None) -> dict[str, Any] | None:
    """The unit's latest shadow figures, with every disagreement it ever reported (a unit lists its last 20; the
    reviews of older ones still count)."""
    if not shadow:
        return shadow
    before = json.loads(x["shadow"]).get("disagreements", []) if x.get("shadow") else []
    seen = list(dict.fromkeys([*before, *(shadow.get("disagreements") or [])]))[-500:]
    return {**shadow, "disagreements": seen}


def _record(engine: Engine, x: dict[str, Any], state: str, reason: str, shadow: Any, now: float) -> None:
    """Keep what the unit reported, when it changed."""
    figures = json.dumps(merged(x, shadow)) if shadow else None
    if (x["state"], x["reason"], x["shadow"]) == (state, reason[:500], figures):
        return
    u = s.rollout_units.c
    with engine.begin() as conn:
        conn.execute(update(s.rollout_units).where(u.rollout_id == x["rollout_id"]).where(u.device_id == x["device_id"])
                     .values(state=state[:16], reason=reason[:500], updated_at=now, shadow=figures))
