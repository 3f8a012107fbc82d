"""What the console forgets, and when: raw results after ``retention.results_days``, parts after ``parts_days``,
aggregates after ``aggregates_days`` (the per-minute part counts, which only the last hour's live counts read, after
a day), alerts after ``alerts_days``, and images by age and by a byte budget, unreviewed ones first (a
reviewed frame is a labelled example for retraining; it goes last)."""

from __future__ import annotations

from sqlalchemy import Engine, delete, func, select

from console import images
from console.config import ConsoleConfig
from console.store import schema as s


def prune(engine: Engine, cfg: ConsoleConfig, now: float) -> dict[str, int]:
    r = cfg.retention
    gone: dict[str, int] = {}
    with engine.begin() as conn:
        gone["results"] = conn.execute(delete(s.results).where(s.results.c.ts < now - r.results_days * 86400)
                                       ).rowcount or 0
        gone["minutes"] = conn.execute(delete(s.minutes).where(
            s.minutes.c.minute < int((now - r.aggregates_days * 86400) // 60))).rowcount or 0
        gone["parts"] = conn.execute(delete(s.parts).where(s.parts.c.ts < now - r.parts_days * 86400)).rowcount or 0
        gone["part_quarters"] = conn.execute(delete(s.part_quarters).where(
            s.part_quarters.c.quarter < int((now - r.aggregates_days * 86400) // 900))).rowcount or 0
        gone["part_minutes"] = conn.execute(delete(s.part_minutes).where(
            s.part_minutes.c.minute < int((now - 86400) // 60))).rowcount or 0
        gone["alerts"] = conn.execute(delete(s.alerts).where(s.alerts.c.ts < now - r.alerts_days * 86400)
                                      ).rowcount or 0
    gone["images"] = _prune_images(engine, cfg, now)
    return gone


def _prune_images(engine: Engine, cfg: ConsoleConfig, now: float) -> int:
    r = cfg.retention
    budget = int(r.images_max_mb * 1024 * 1024)
    with engine.connect() as conn:
        old = [sha for (sha,) in conn.execute(select(s.images.c.sha256).where(
            s.images.c.created < now - r.images_days * 86400))]
        total = int(conn.execute(select(func.coalesce(func.sum(s.images.c.bytes), 0))).scalar_one())
        over: list[str] = []
        if total > budget:
            # Unreviewed first, oldest first, until the rest fits.
            for sha, size in conn.execute(select(s.images.c.sha256, s.images.c.bytes).order_by(
                    s.images.c.reviewed, s.images.c.created)):
                if total <= budget:
                    break
                over.append(sha)
                total -= size
    doomed = list(dict.fromkeys(old + over))
    for i in range(0, len(doomed), 500):
        chunk = doomed[i:i + 500]
        with engine.begin() as conn:
            conn.execute(delete(s.frame_images).where(s.frame_images.c.sha256.in_(chunk)))
            conn.execute(delete(s.images).where(s.images.c.sha256.in_(chunk)))
        for sha in chunk:
            images.remove(cfg.images_dir, sha)
    return len(doomed)


