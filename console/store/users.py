"""The users and sessions tables: the SQL behind console/auth.py, which holds the rules (hashing, names, roles,
cookies) and calls these with what it has decided.

Sessions are stored by the SHA-256 of their token (``sid``), never the token itself: a copy of the database opens no
session.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update

from console.store import schema as s


def listing(engine: Engine) -> list[dict[str, Any]]:
    """The Users page: every user's name, role, creation time and whether disabled, by name."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(s.users.c.name, s.users.c.role, s.users.c.created,
                                                     s.users.c.disabled).order_by(s.users.c.name)).mappings()]


def names(conn: Connection) -> list[str]:
    return [n for (n,) in conn.execute(select(s.users.c.name))]


def insert(conn: Connection, name: str, password_hash: str, role: str) -> None:
    conn.execute(s.users.insert().values(name=name, password_hash=password_hash, role=role, created=time.time(),
                                         disabled=False))


def set_hash(conn: Connection, name: str, password_hash: str) -> bool:
    """False when there is no such user."""
    return bool(conn.execute(update(s.users).where(s.users.c.name == name).values(password_hash=password_hash))
                .rowcount)


def role_row(conn: Connection, name: str) -> Any:
    """(role, disabled) of ``name``, or None."""
    return conn.execute(select(s.users.c.role, s.users.c.disabled).where(s.users.c.name == name)).first()


def credentials(engine: Engine, name: str) -> Any:
    """(password_hash, role, disabled) of ``name``, or None."""
    with engine.connect() as conn:
        return conn.execute(select(s.users.c.password_hash, s.users.c.role, s.users.c.disabled)
                            .where(s.users.c.name == name)).first()


def set_role(conn: Connection, name: str, role: str, disabled: bool) -> None:
    conn.execute(update(s.users).where(s.users.c.name == name).values(role=role, disabled=disabled))


def admins_left(conn: Connection, without: str) -> int:
    """Enabled admins but ``without``."""
    return len(conn.execute(select(s.users.c.name).where(s.users.c.role == "admin", s.users.c.disabled.is_(False),
                                                         s.users.c.name != without)).all())


def end_sessions(conn: Connection, user: str, *, but: str | None = None) -> None:
    """End every session of ``user`` (but the one named ``but``)."""
    conn.execute(delete(s.sessions).where(s.sessions.c.user == user, s.sessions.c.id != (but or "")))


def open_session(engine: Engine, sid: str, user: str, csrf: str, *, expired_before: float) -> None:
    """A new session; the sessions older than ``expired_before`` go with the same transaction."""
    with engine.begin() as conn:
        conn.execute(delete(s.sessions).where(s.sessions.c.created < expired_before))
        conn.execute(s.sessions.insert().values(id=sid, user=user, csrf=csrf, created=time.time()))


def session(engine: Engine, sid: str) -> tuple[str, str] | None:
    """(user, CSRF token) of the session, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(s.sessions.c.user, s.sessions.c.csrf).where(s.sessions.c.id == sid)).first()
    return None if row is None else (row.user, row.csrf)


def close_session(engine: Engine, sid: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(s.sessions).where(s.sessions.c.id == sid))
