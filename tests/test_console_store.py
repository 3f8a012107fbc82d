"""The console's store and its rules, without a browser: the migrations build exactly the schema the queries use,
writes are idempotent (a redelivered message changes nothing, aggregates count each result once), retention keeps
reviewed images longest, and the login rules (argon2, roles, expiring signed sessions, the rate limit) hold."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Engine, func, select, update

from console import auth, config, images
from console.store import db, queries, retention, writer
from console.store import schema as s
from console.store import users as user_store
from contract import payloads, topics

SHA = "5" * 64


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = db.engine_for(f"sqlite:///{tmp_path / 'console.db'}")
    assert db.migrate(e) == "0006"
    return e


def result_item(device: str, n: int, p: float, ts: float) -> writer.Item:
    r = payloads.Result(device_id=device, ts=topics.iso(ts), frame_id=f"{device}-1-{n:09d}",
                        label="defective" if p > 0.5 else "good", defective=p > 0.5, p_defect=p,
                        confidence=max(p, 1 - p), threshold=0.5, low_confidence=0.4 <= p <= 0.6,
                        model=payloads.ModelRef(name="m", quantization="int8", sha256=SHA),
                        timings_ms={"preprocess": 0.5, "inference": 3.0, "postprocess": 0.5})
    return writer.Item("result", device, ts, message=r)


def test_the_migrations_build_the_schema_the_queries_use(engine: Engine) -> None:
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), s.metadata) == []
    assert db.migrate(engine) == "0006", "a second start migrates nothing"


def test_a_redelivered_batch_changes_nothing_and_aggregates_count_once(engine: Engine) -> None:
    t = 1_800_000_000.0  # a minute boundary
    batch = [result_item("u1", i, p, t + i) for i, p in enumerate((0.05, 0.95, 0.55, 0.99, 0.01))]
    assert writer.write(engine, batch) == {"results": 5}
    assert writer.write(engine, [*batch, result_item("u1", 9, 0.7, t + 9)]) == {"results": 1}
    with engine.connect() as conn:
        m = conn.execute(select(s.minutes)).mappings().one()
    assert (m["frames"], m["defective"], m["low_confidence"]) == (6, 4, 1)
    assert [m[f"p{i}"] for i in range(10)] == [2, 0, 0, 0, 0, 1, 0, 1, 0, 2]
    assert m["l2"] == 6, "4 ms per frame falls in the 2-4 ms bucket"
    rows = queries.fleet(engine, now=t + 60)
    assert rows[0]["device_id"] == "u1" and rows[0]["frames_hour"] == 6 and rows[0]["defect_rate_hour"] == 4 / 6


def test_a_units_newest_results_come_in_its_order_within_a_millisecond(engine: Engine) -> None:
    t = 1_800_000_000.0
    writer.write(engine, [result_item("u1", n, 0.1, t + (n > 2)) for n in (3, 0, 2, 1)])
    frames = [r["frame_id"][-1] for r in queries.latest_results(engine, "u1")]
    assert frames == ["3", "2", "1", "0"]


def test_alerts_images_and_replies_are_stored_once(engine: Engine, tmp_path: Path) -> None:
    a = payloads.Alert(device_id="u1", kind="defect", frame_id="u1-1-000000001", dedup_key="u1:defect:1",
                       label="defective", p_defect=0.9, note="<script>alert(1)</script>")
    sha = images.store(tmp_path / "img", b"\xff\xd8jpeg")
    items = [writer.Item("alert", "u1", 1.0, message=a),
             writer.Item("snapshot", "u1", 1.0, key="u1-1-000000001", sha256=sha, size=6),
             writer.Item("available", "u1", 1.0, online=True)]
    writer.write(engine, items)
    writer.write(engine, items)
    rows, total = queries.alerts(engine)
    assert total == 1 and rows[0]["snapshot"] == sha and rows[0]["heatmap"] is None
    assert queries.alert(engine, "u1:defect:1")["payload"]["note"] == "<script>alert(1)</script>"  # type: ignore[index]
    assert queries.unit(engine, "u1")["online"] is True  # type: ignore[index]


def test_images_over_the_budget_go_unreviewed_first(engine: Engine, tmp_path: Path) -> None:
    cfg = config.parse({"state": {"dir": str(tmp_path)}, "retention": {"images_max_mb": 0.001}})  # ~1 KiB
    now = time.time()
    shas = [images.store(cfg.images_dir, b"\xff\xd8" + bytes([i]) * 400) for i in range(4)]
    with engine.begin() as conn:
        for i, sha in enumerate(shas):
            conn.execute(s.images.insert().values(sha256=sha, bytes=402, created=now - 100 + i, reviewed=i == 0))
    gone = retention.prune(engine, cfg, now)
    assert gone["images"] == 2
    with engine.connect() as conn:
        kept = {r.sha256 for r in conn.execute(select(s.images.c.sha256))}
    assert kept == {shas[0], shas[3]}, "the reviewed one stays though oldest; then the newest"
    assert not images.path_of(cfg.images_dir, shas[1]).exists()


def test_passwords_are_argon2_and_roles_nest(engine: Engine) -> None:
    auth.add_user(engine, "lead", "long enough pw", "operator")
    with engine.connect() as conn:
        stored = conn.execute(select(s.users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and "long enough pw" not in stored
    assert auth.authenticate(engine, "lead", "long enough pw") == "operator"
    assert auth.authenticate(engine, "lead", "wrong") is None and auth.authenticate(engine, "nobody", "x") is None
    with pytest.raises(auth.AuthError, match="at least 10"):
        auth.add_user(engine, "short", "short", "viewer")
    with pytest.raises(auth.AuthError, match="exists"):
        auth.add_user(engine, "lead", "long enough pw", "admin")
    u = auth.User("lead", "operator", "t")
    assert u.can("viewer") and u.can("operator") and not u.can("engineer")
    with engine.begin() as conn:
        conn.execute(update(s.users).values(disabled=True))
    assert auth.authenticate(engine, "lead", "long enough pw") is None


def test_sessions_expire_cannot_be_forged_and_end_when_they_must(engine: Engine) -> None:
    auth.add_user(engine, "lead", "long enough pw", "admin")
    auth.add_user(engine, "second", "long enough pw", "admin")
    sessions = auth.Sessions(engine, b"k" * 32, max_age_s=60)
    cookie = sessions.issue("lead")
    name, csrf = sessions.read(cookie) or ("", "")
    assert name == "lead" and len(csrf) > 20
    assert sessions.read(cookie[:-2] + "xx") is None
    assert auth.Sessions(engine, b"other key" * 4, 60).read(cookie) is None
    old = URLSafeTimedSerializer(b"k" * 32, salt="console-session")
    assert sessions.read(old.dumps({"u": "lead", "c": "x"})) is None, "the old cookie format names no session"
    assert sessions.read(old.dumps({"t": "guessed"})) is None, "a signed token the store never issued"
    expired = auth.Sessions(engine, b"k" * 32, max_age_s=-1)
    assert expired.read(cookie) is None
    assert auth.csrf_ok(csrf, csrf) and not auth.csrf_ok(csrf, None) and not auth.csrf_ok(csrf, csrf[:-1])

    other = sessions.issue("lead")
    sessions.end(cookie)  # log out here
    assert sessions.read(cookie) is None and sessions.read(other) is not None, "a logout ends its own session"
    keep = sessions.issue("lead")
    auth.set_password(engine, "lead", "another long pw", keep_session=sessions.token(keep))
    assert sessions.read(other) is None and sessions.read(keep) is not None, "a password change ends the others"
    auth.set_password(engine, "lead", "a third long pw")
    assert sessions.read(keep) is None, "an admin's reset ends them all"
    back = sessions.issue("lead")
    auth.set_role(engine, "lead", "admin", disabled=True)
    auth.set_role(engine, "lead", "admin", disabled=False)
    assert sessions.read(back) is None, "disabling ends them; enabling again brings none back"
    again = sessions.issue("lead")
    auth.end_sessions(engine, "lead")
    assert sessions.read(again) is None, "sign out everywhere"


def test_the_last_admin_stays_one(engine: Engine) -> None:
    auth.add_user(engine, "only", "long enough pw", "admin")
    for role, disabled in (("viewer", False), ("admin", True)):
        with pytest.raises(auth.AuthError, match="only admin"):
            auth.set_role(engine, "only", role, disabled=disabled)
    auth.add_user(engine, "next", "long enough pw", "admin")
    auth.set_role(engine, "only", "viewer")


def test_logins_are_limited_per_user_and_address_and_per_address_never_per_user_alone() -> None:
    limiter = auth.LoginLimiter(per_minute=3)
    for i in range(3):
        assert limiter.allowed("lead", "10.0.0.1", now=i)
        limiter.failed("lead", "10.0.0.1", now=i)
    assert not limiter.allowed("lead", "10.0.0.1", now=5), "that name from that address: blocked"
    assert limiter.allowed("lead", "10.0.0.2", now=5), "the user, from elsewhere, is never locked out by others"
    assert limiter.allowed("other", "10.0.0.1", now=5), "another user from the same address"
    assert limiter.allowed("lead", "10.0.0.1", now=63), "a minute later"
    for i in range(3):
        limiter.failed("lead", "10.0.0.1", now=70 + i)
    assert not limiter.allowed("lead", "10.0.0.1", now=72 + 61), "the next block within the hour: twice as long"
    assert limiter.allowed("lead", "10.0.0.1", now=72 + 121)
    for i in range(12):  # one address trying many names
        limiter.failed(f"user{i}", "10.0.0.9", now=300 + i)
    assert not limiter.allowed("anyone", "10.0.0.9", now=312), "the address is limited for any name"


def test_reports_bucket_by_hour_shift_and_day_and_compare_weeks(engine: Engine) -> None:
    from datetime import datetime

    from console.store import reports

    now = datetime(2026, 11, 27, 15, 30).timestamp()  # a Friday, 15:30 local time
    items = [result_item("u1", i, 0.9 if i % 4 == 0 else 0.1, now - 600 + i) for i in range(40)]  # 14:20-14:21
    items += [result_item("u1", 100 + i, 0.1, now - 3 * 3600 + i) for i in range(10)]  # 12:30: the morning shift
    items += [result_item("u1", 200 + i, 0.55, now - 9 * 86400 + i) for i in range(10)]  # last week
    writer.write(engine, items)
    hours = reports.defect_rate(engine, by="hour", now=now)
    assert [(r["period"][-5:], r["frames"], r["defective"]) for r in hours] == [("12:00", 10, 0), ("15:00", 40, 10)]
    shifts = reports.defect_rate(engine, by="shift", now=now)
    assert [(r["period"][-5:], r["frames"]) for r in shifts] == [("06:00", 10), ("14:00", 40)]
    assert reports.defect_rate(engine, by="day", now=now)[-1]["rate"] == 0.2
    d = reports.drift(engine, now=now)
    assert d["frames"] == [50, 10] and d["last_week"][5] == 1.0 and d["this_week"][1] == 0.8
    lat = reports.latency(engine, now=now)
    assert lat[0]["frames"] == 50 and lat[0]["p95"] == "<= 4 ms" and lat[0]["mean_ms"] == 4.0


def test_look_alike_user_names_are_refused(engine: Engine) -> None:
    auth.add_user(engine, "admin", "long enough pw", "admin")
    for name, why in (("\u0430dmin", "one script"), ("Admin", "exists"), ("\uff41\uff44\uff4d\uff49\uff4e", "exists"),
                      ("ad\u200bmin", "letters, digits")):
        with pytest.raises(auth.AuthError, match=why):
            auth.add_user(engine, name, "long enough pw", "viewer")
    auth.add_user(engine, "J\u00fcrgen", "long enough pw", "viewer")  # one script, accents and all
    assert {u["name"] for u in user_store.listing(engine)} == {"admin", "J\u00fcrgen"}


def part_item(device: str, n: int, verdict: str, ts: float, sha: str = SHA) -> writer.Item:
    p = {"ok": 0.1, "ng": 0.9, "unsure": 0.5, "missed": None}[verdict]
    m = payloads.Part(device_id=device, ts=topics.iso(ts), part_id=f"{device}-1-p{n:09d}", seq=n, trigger="gpio",
                      verdict=verdict, aggregate="max", frames=[], p_defect=p,
                      frame_id=None if p is None else f"{device}-1-{n:09d}",
                      model=payloads.ModelRef(name="m", quantization="int8", sha256=sha), timings_ms={})
    return writer.Item("part", device, ts, message=m, raw=payloads.dumps(m))


def test_parts_are_stored_once_and_counted_by_period_unit_and_model(engine: Engine) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from console.store import reports

    now = datetime(2026, 11, 27, 15, 30).timestamp()
    verdicts = ["ok"] * 10 + ["ng"] * 4 + ["unsure", "missed"]
    items = [part_item("u1", i, v, now - 1800 + i) for i, v in enumerate(verdicts, 1)]
    items += [part_item("u1", 100 + i, "ok", now - 1800 + i, sha="6" * 64) for i in range(4)]  # a newer model
    assert writer.write(engine, items)["parts"] == 20
    assert writer.write(engine, items[:5]).get("parts", 0) == 0, "redelivered: stored and counted once"
    fleet = queries.fleet(engine, now=now)
    c = fleet[0]["parts_hour"]
    assert (c["parts"], c["ok"], c["ng"], c["unsure"], c["missed"]) == (20, 14, 4, 1, 1)
    assert c["fpy"] == 14 / 20 and c["ng_rate"] == 4 / 20
    for by in ("hour", "shift", "day", "week"):
        rows = reports.parts(engine, by=by, now=now)
        assert len(rows) == 1 and rows[0]["parts"] == 20 and rows[0]["fpy"] == 0.7, (by, rows)
    models = reports.parts(engine, by="day", now=now, per_model=True)
    assert sorted((r["version"], r["parts"], r["ng"]) for r in models) == [("555555555555", 16, 4),
                                                                           ("666666666666", 4, 0)]
    shift = reports.parts(engine, by="shift", now=now, shift_starts=("06:00", "14:00", "22:00"),
                          tz=ZoneInfo("Asia/Kolkata"))  # the plant's clock, not the console's
    local = datetime.fromtimestamp(now - 1800, ZoneInfo("Asia/Kolkata"))
    start = "14:00" if 14 <= local.hour < 22 else "06:00" if 6 <= local.hour < 14 else "22:00"
    assert shift[0]["period"].endswith(start), (shift, local)


def test_reviewed_parts_become_false_reject_and_escape_rates_with_their_intervals(engine: Engine) -> None:
    from console.store import reports

    now = time.time()
    items = [part_item("u1", i, "ng", now - 100 + i) for i in range(1, 11)]
    items += [part_item("u1", i, "ok", now - 100 + i) for i in range(11, 41)]
    writer.write(engine, items)
    truths = {i: ("good" if i <= 2 else "defective") for i in range(1, 11)}  # 2 of 10 NG parts were good
    truths.update(dict.fromkeys(range(11, 41), "good"))  # 30 sampled OK parts, none defective
    with engine.begin() as conn:
        conn.execute(s.reviews.insert(), [{"device_id": "u1", "frame_id": f"u1-1-{i:09d}", "verdict": "x",
                                           "truth": t, "note": "", "user": "lead", "ts": now}
                                          for i, t in truths.items()])
    [q] = reports.quality(engine)
    assert (q["ng_reviewed"], q["false_rejects"], q["ok_reviewed"], q["escapes"]) == (10, 2, 30, 0)
    assert q["false_reject_rate"] == 0.2 and q["escape_rate"] == 0.0
    lo, hi = q["false_reject_ci"]
    assert 0.05 < lo < 0.06 and 0.50 < hi < 0.52
    assert q["escape_ci"][0] == 0.0 and 0.11 < q["escape_ci"][1] < 0.12, "none in 30 still allows 11 %"


def test_parts_and_their_counts_are_forgotten_on_their_own_clocks(engine: Engine, tmp_path: Path) -> None:
    cfg = config.parse({"state": {"dir": str(tmp_path)}, "retention": {"parts_days": 30, "aggregates_days": 365}})
    now = time.time()
    writer.write(engine, [part_item("u1", 1, "ok", now - 40 * 86400), part_item("u1", 2, "ng", now - 2 * 86400),
                          part_item("u1", 3, "ok", now - 60)])
    gone = retention.prune(engine, cfg, now)
    assert (gone["parts"], gone["part_quarters"], gone["part_minutes"]) == (1, 0, 2)
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(s.part_quarters.c.parts))).scalar_one() == 3, "reports reach back"
    assert queries.fleet(engine, now=now)[0]["parts_hour"]["parts"] == 1
