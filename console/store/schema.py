"""The tables, as SQLAlchemy Core objects for queries. The DDL that creates and changes them is in ``migrations/``:
a change here goes with a new migration (``tests/test_console_store.py`` checks the two agree).

Times are UNIX epoch seconds (float): portable across SQLite and PostgreSQL, and cheap to compare and bucket.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import BigInteger

from contract import payloads

metadata = MetaData()

# p_defect histogram bins (0.0-0.1, ..., 0.9-1.0) and latency buckets (upper bounds, ms) of the minute aggregates.
P_BINS = 10
LATENCY_BOUNDS_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # and one more bucket for anything slower
ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's rowid alias must be INTEGER

units = Table(
    "units", metadata,
    Column("device_id", String(64), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("online", Boolean, nullable=True),  # from the retained `available`; None until it is heard
    Column("available_at", Float, nullable=True),
    Column("status", Text, nullable=True),  # the last retained status, as the unit sent it
    Column("status_at", Float, nullable=True),
    Column("metrics", Text, nullable=True),
    Column("metrics_at", Float, nullable=True),
    Column("last_alert_at", Float, nullable=True),
    Column("last_alert_kind", String(32), nullable=True),
)

results = Table(
    "results", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("frame_id", String(128), nullable=False),
    Column("ts", Float, nullable=False, index=True),
    Column("label", String(40), nullable=False),
    Column("p_defect", Float, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("low_confidence", Boolean, nullable=False),
    Column("model", String(100), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("latency_ms", Float, nullable=False),
    UniqueConstraint("device_id", "frame_id", name="results_frame"),
)

minutes = Table(
    "minutes", metadata,
    Column("device_id", String(64), primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # epoch // 60
    Column("model_sha256", String(64), primary_key=True),
    Column("model", String(100), nullable=False),
    Column("frames", Integer, nullable=False),
    Column("defective", Integer, nullable=False),
    Column("low_confidence", Integer, nullable=False),
    Column("latency_sum_ms", Float, nullable=False),
    *(Column(f"p{i}", Integer, nullable=False) for i in range(P_BINS)),
    *(Column(f"l{i}", Integer, nullable=False) for i in range(len(LATENCY_BOUNDS_MS) + 1)),
)

VERDICTS: tuple[str, ...] = payloads.VERDICTS  # a part's, as the unit decides it (docs/line.md)

parts = Table(  # one per part a unit judged: what the line acted on, the console's unit of account
    "parts", metadata,
    Column("device_id", String(64), primary_key=True),
    Column("part_id", String(128), primary_key=True),
    Column("seq", ID, nullable=False),
    Column("ts", Float, nullable=False, index=True),  # the deciding frame's capture (the trigger's, if missed)
    Column("trigger", String(16), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("p_defect", Float, nullable=True),
    Column("frame_id", String(128), nullable=True),  # the deciding frame: its snapshot, crop and heatmap
    Column("model", String(100), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("payload", Text, nullable=False),  # as the unit sent it: crop, framing, familiarity, timings
    Index("parts_frame", "device_id", "frame_id"),  # a review, a sampled snapshot: the part its frame decided
)

def _part_counts(name: str, period: str) -> Table:
    return Table(
        name, metadata,
        Column("device_id", String(64), primary_key=True),
        Column(period, BigInteger, primary_key=True),
        Column("model_sha256", String(64), primary_key=True),
        Column("model", String(100), nullable=False),
        Column("parts", Integer, nullable=False),
        *(Column(v, Integer, nullable=False) for v in VERDICTS),
    )


# Parts per unit and model, kept as long as the frame aggregates: per minute (epoch // 60) for the last hour's live
# counts, per quarter hour (epoch // 900) for the reports, which then read a fifteenth of the rows (a report by
# shift over a million parts: 0.6 s of SQLite summing minutes). A quarter never straddles a shift or a day in any
# time zone: every zone's offset, and every shift start (web.shift_starts), is a whole number of quarters.
part_minutes = _part_counts("part_minutes", "minute")
part_quarters = _part_counts("part_quarters", "quarter")

alerts = Table(
    "alerts", metadata,
    Column("dedup_key", String(200), primary_key=True),
    Column("device_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("frame_id", String(128), nullable=True),
    Column("ts", Float, nullable=False, index=True),
    Column("p_defect", Float, nullable=True),
    Column("payload", Text, nullable=False),
    Index("alerts_frame", "device_id", "frame_id"),  # the review queue: is a snapshot an alert's, or a sample?
)

images = Table(  # one file per content under <state>/images/<sha[:2]>/<sha>.jpg
    "images", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("bytes", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Column("reviewed", Boolean, nullable=False, default=False),
)

frame_images = Table(
    "frame_images", metadata,
    Column("device_id", String(64), primary_key=True),
    Column("frame_id", String(128), primary_key=True),
    Column("kind", String(16), primary_key=True),  # snapshot (what the model saw) | frame (the whole, boxed) | gradcam
    Column("sha256", String(64), nullable=False, index=True),
    Column("received", Float, nullable=False),
)

events = Table(  # what else units say: availability changes, heatmap events, command replies
    "events", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("received", Float, nullable=False),
    Column("request_id", String(128), nullable=True, index=True),
    Column("payload", Text, nullable=False),
)

commands = Table(  # every command a person sent, who and when, and the unit's reply: the audit of actions on units
    "commands", metadata,
    Column("request_id", String(128), primary_key=True),
    Column("ts", Float, nullable=False, index=True),
    Column("user", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("command", String(40), nullable=False),
    Column("args", Text, nullable=False),
    Column("reply_ok", Boolean, nullable=True),
    Column("reply", Text, nullable=True),
    Column("replied_at", Float, nullable=True),
)

users = Table(
    "users", metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

sessions = Table(  # one per login: the cookie holds its token, signed; the id is the token's SHA-256
    "sessions", metadata,
    Column("id", String(64), primary_key=True),
    Column("user", String(64), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created", Float, nullable=False),
)

audit = Table(  # logins, refusals, user changes
    "audit", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("user", String(64), nullable=False),
    Column("action", String(40), nullable=False),
    Column("detail", Text, nullable=False),
)

counters = Table(  # ingest counters per console instance: received, stored, rejected_<reason>, db_errors
    "counters", metadata,
    Column("instance", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

reviews = Table(  # a person's verdict on a unit's call: the console's half of the retraining data set
    "reviews", metadata,
    Column("device_id", String(64), primary_key=True),
    Column("frame_id", String(128), primary_key=True),
    Column("verdict", String(16), nullable=False),  # right | wrong | unsure
    Column("truth", String(16), nullable=True),  # good | defective (None: unsure)
    Column("predicted", String(40), nullable=True),
    Column("p_defect", Float, nullable=True),
    Column("model", String(100), nullable=True),
    Column("model_sha256", String(64), nullable=True),
    Column("sha256", String(64), nullable=True),  # the snapshot reviewed
    Column("note", Text, nullable=False, default=""),
    Column("user", String(64), nullable=False),
    Column("ts", Float, nullable=False, index=True),
    Column("feedback_request_id", String(128), nullable=True),  # cmd/feedback to the unit; its reply is in commands
)

rollouts = Table(  # a release sent to a set of units in waves, a canary first (console/store/rollouts.py)
    "rollouts", metadata,
    Column("id", String(16), primary_key=True),
    Column("model", String(100), nullable=False),
    Column("version", Integer, nullable=True),  # None: the newest when each unit fetches it
    Column("units", String(200), nullable=False),  # glob patterns on device ids, comma-separated
    Column("canary", Integer, nullable=False),  # units in the first wave
    Column("factor", Float, nullable=False),  # each wave this many times the one before
    Column("auto_promote", Boolean, nullable=False),  # promote by the gates below, or wait for an engineer
    Column("min_compared", Integer, nullable=False),  # gate: frames the shadow compared
    Column("min_agreement", Float, nullable=False),  # gate: its agreement with the active model
    # gate: of its disagreements with the active model, this many reviewed in the console, and the candidate right on
    # at least as many as the active model (0: no review needed)
    Column("min_reviewed", Integer, nullable=False, default=0),
    # gate: the candidate's inference p95 in shadow (one thread: at most this on the unit's own) (0: no bound)
    Column("max_inference_ms", Float, nullable=False, default=0.0),
    Column("state", String(16), nullable=False),  # running | done | aborted
    Column("reason", Text, nullable=False, default=""),
    Column("wave", Integer, nullable=False),  # the wave under way (0: the canary)
    Column("created_by", String(64), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("updated_at", Float, nullable=False),
)

rollout_units = Table(  # each unit of a rollout: its wave, and its release's state as the unit last reported it
    "rollout_units", metadata,
    Column("rollout_id", String(16), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # waiting | sent | (the unit's) ... | promote_sent | promoted
    Column("reason", Text, nullable=False, default=""),
    Column("shadow", Text, nullable=True),  # the unit's last shadow figures (JSON)
    Column("updated_at", Float, nullable=False),
)

mail_links = Table(  # each one-time review link from a mail, once it was used (contract/links.py)
    "mail_links", metadata,
    Column("nonce", String(32), primary_key=True),
    Column("used_at", Float, nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("frame_id", String(128), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("recipients", Text, nullable=False),
)
