"""Opening the console's database and bringing its schema up to date.

SQLite gets WAL (readers never block the writer) and a busy timeout; PostgreSQL a connection pool. Migrations run at
start, inside one transaction; on PostgreSQL under an advisory lock, so several console instances starting together
migrate once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK = 7_212_354  # pg_advisory_xact_lock key: "console migrations"


def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A writer waits up to 5 s for another (WAL: readers never block it); then the historian reports the
        # database as locked and retries, and the broker keeps what is not stored.
        engine = create_engine(url, connect_args={"timeout": 5, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi: Any, _record: Any) -> None:
            cur = dbapi.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision; returns it."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        command.upgrade(alembic_config(conn), "head")
        return str(MigrationContext.configure(conn).get_current_revision())
