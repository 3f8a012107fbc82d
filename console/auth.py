"""Who may do what: users with argon2 password hashes, four roles, signed expiring session cookies, CSRF tokens, and a
login rate limit. Every check happens on the server; a page hides what a role may not do, and the route refuses it.

Roles, each including the ones before it: ``viewer`` (sees everything), ``operator`` (reviews calls), ``engineer``
(commands units, manages models), ``admin`` (manages users). A session cookie holds the user name, a CSRF token and
when it was issued, signed with the console's secret key; it is refused after ``web.session_max_age_s``, and the
user's role is read from the store on every request, so a changed role or a disabled user takes effect at once.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine, select, update

from console.store import schema as s

Role = Literal["viewer", "operator", "engineer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "engineer", "admin")
_hasher = PasswordHasher()
MIN_PASSWORD = 10


class AuthError(ValueError):
    """A user-management request that cannot be done; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    csrf: str

    def can(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def check_name(name: str) -> str:
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise AuthError("a user name is 1-64 letters, digits, '.', '_', '-' or '@'")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"a password has at least {MIN_PASSWORD} characters")
    return password


def add_user(engine: Engine, name: str, password: str, role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    check_name(name)
    with engine.begin() as conn:
        if conn.execute(select(s.users.c.name).where(s.users.c.name == name)).first():
            raise AuthError(f"user {name!r} exists; change its password or role instead")
        conn.execute(s.users.insert().values(name=name, password_hash=_hasher.hash(check_password(password)),
                                             role=role, created=time.time(), disabled=False))


def set_password(engine: Engine, name: str, password: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(update(s.users).where(s.users.c.name == name).values(
            password_hash=_hasher.hash(check_password(password))))
        if not done.rowcount:
            raise AuthError(f"no user {name!r}")


def set_role(engine: Engine, name: str, role: str, *, disabled: bool = False) -> None:
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    with engine.begin() as conn:
        if not conn.execute(update(s.users).where(s.users.c.name == name).values(role=role,
                                                                                 disabled=disabled)).rowcount:
            raise AuthError(f"no user {name!r}")


# A hash of a random password: verifying against it takes as long as a real check, so a wrong user name and a
# wrong password cannot be told apart by the time the answer takes.
_DUMMY = _hasher.hash(secrets.token_hex(16))


def authenticate(engine: Engine, name: str, password: str) -> Role | None:
    with engine.connect() as conn:
        row = conn.execute(select(s.users.c.password_hash, s.users.c.role, s.users.c.disabled)
                           .where(s.users.c.name == name)).first()
    try:
        _hasher.verify(row.password_hash if row else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled:
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        set_password(engine, name, password)
    role: Role = row.role
    return role


def role_of(engine: Engine, name: str) -> Role | None:
    with engine.connect() as conn:
        row = conn.execute(select(s.users.c.role, s.users.c.disabled).where(s.users.c.name == name)).first()
    if row is None or row.disabled:
        return None
    role: Role = row.role
    return role


class Sessions:
    """Signed session cookies: ``{"u": name, "c": csrf token}``, valid for ``max_age_s`` after login."""

    COOKIE = "console_session"

    def __init__(self, secret: bytes, max_age_s: int):
        self._s = URLSafeTimedSerializer(secret, salt="console-session")
        self.max_age_s = max_age_s

    def issue(self, name: str) -> str:
        return self._s.dumps({"u": name, "c": secrets.token_urlsafe(24)})

    def read(self, cookie: str | None) -> tuple[str, str] | None:
        """(user name, CSRF token) of a valid cookie, else None."""
        if not cookie:
            return None
        try:
            data = self._s.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # includes SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("c"), str):
            return None
        return data["u"], data["c"]


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


class LoginLimiter:
    """At most ``per_minute`` failed logins per user name and per client address in any minute."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures[key]
        while q and now - q[0] > 60:
            q.popleft()
        return q

    def allowed(self, name: str, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return all(len(self._recent(k, now)) < self.per_minute for k in (f"u:{name}", f"a:{address}"))

    def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for k in (f"u:{name}", f"a:{address}"):
                self._recent(k, now).append(now)
