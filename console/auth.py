"""Who may do what: users with argon2 password hashes, four roles, signed expiring session cookies, CSRF tokens, and a
login rate limit. Every check happens on the server; a page hides what a role may not do, and the route refuses it.

Roles, each including the ones before it: ``viewer`` (sees everything), ``operator`` (reviews calls), ``engineer``
(commands units, manages models), ``admin`` (manages users). Sessions are server-side (``sessions`` in the store):
the cookie holds a random token, signed with the console's secret key and refused after ``web.session_max_age_s``;
the store keeps the token's SHA-256 with the user and the CSRF token. Each request (and each tick of a live stream)
looks its session up, and the user's role, so a logout ends that session, and a password change, disabling a user
or "sign out everywhere" end all of the user's at once. (A signed cookie alone, as before, stayed valid after all
three until it expired.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import unicodedata
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine

from console.store import users

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


def _script(c: str) -> str:
    return unicodedata.name(c, "UNKNOWN").split(" ")[0]


def check_name(name: str) -> str:
    """The name as stored: NFKC-normalised (a full-width "ａｄｍｉｎ" is "admin"), 1-64 letters of one script, digits,
    '.', '_', '-' or '@'. A name mixing scripts is refused: "аdmin" with a Cyrillic "а" reads as "admin" in every
    audit line and list. (A name wholly in another script that happens to look Latin is not caught.)"""
    name = unicodedata.normalize("NFKC", name)
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise AuthError("a user name is 1-64 letters, digits, '.', '_', '-' or '@'")
    scripts = {_script(c) for c in name if c.isalpha()}
    if len(scripts) > 1:
        raise AuthError(f"a user name uses the letters of one script ({', '.join(sorted(scripts)).lower()} "
                        "mixed): look-alike names are refused")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"a password has at least {MIN_PASSWORD} characters")
    return password


def add_user(engine: Engine, name: str, password: str, role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    name = check_name(name)
    with engine.begin() as conn:
        taken = [n for n in users.names(conn) if n.casefold() == name.casefold()]
        if taken:
            raise AuthError(f"user {taken[0]!r} exists; change its password or role instead")
        users.insert(conn, name, _hasher.hash(check_password(password)), role)


def set_password(engine: Engine, name: str, password: str, *, keep_session: str | None = None) -> None:
    """A new password; every session of the user ends with the old one (but ``keep_session``, the cookie of the
    user changing their own)."""
    with engine.begin() as conn:
        if not users.set_hash(conn, name, _hasher.hash(check_password(password))):
            raise AuthError(f"no user {name!r}")
        users.end_sessions(conn, name, but=_session_id(keep_session))


def set_role(engine: Engine, name: str, role: str, *, disabled: bool = False) -> None:
    """A user's role and whether they may log in; disabling ends their sessions. The last admin stays one: no one
    would be left to manage users."""
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    with engine.begin() as conn:
        row = users.role_row(conn, name)
        if row is None:
            raise AuthError(f"no user {name!r}")
        demoted = role != "admin" or disabled
        if row.role == "admin" and not row.disabled and demoted and not users.admins_left(conn, name):
            raise AuthError(f"{name!r} is the only admin: make another user admin first")
        users.set_role(conn, name, role, disabled)
        if disabled:
            users.end_sessions(conn, name)


def end_sessions(engine: Engine, name: str) -> None:
    """Sign ``name`` out everywhere."""
    with engine.begin() as conn:
        users.end_sessions(conn, name)


# A hash of a random password: verifying against it takes as long as a real check, so a wrong user name and a
# wrong password cannot be told apart by the time the answer takes.
_DUMMY = _hasher.hash(secrets.token_hex(16))


def authenticate(engine: Engine, name: str, password: str) -> Role | None:
    row = users.credentials(engine, name)
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
        row = users.role_row(conn, name)
    if row is None or row.disabled:
        return None
    role: Role = row.role
    return role


def _sid(token: str) -> str:
    """What the store keeps of a session's token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _session_id(token: str | None) -> str | None:
    return _sid(token) if token else None


class Sessions:
    """Server-side sessions, named by a signed cookie holding a random token, valid for ``max_age_s`` after login
    unless ended first."""

    COOKIE = "console_session"

    def __init__(self, engine: Engine, secret: bytes, max_age_s: int):
        self.engine = engine
        self._s = URLSafeTimedSerializer(secret, salt="console-session")
        self.max_age_s = max_age_s

    def issue(self, name: str) -> str:
        token = secrets.token_urlsafe(32)
        users.open_session(self.engine, _sid(token), name, secrets.token_urlsafe(24),
                           expired_before=time.time() - self.max_age_s)
        return self._s.dumps({"t": token})

    def _token(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            data = self._s.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # includes SignatureExpired
            return None
        token = data.get("t") if isinstance(data, dict) else None
        return token if isinstance(token, str) else None

    def read(self, cookie: str | None) -> tuple[str, str] | None:
        """(user name, CSRF token) of a live session, else None."""
        sid = _session_id(self._token(cookie))
        return None if sid is None else users.session(self.engine, sid)

    def end(self, cookie: str | None) -> None:
        """Log out: this session ends."""
        sid = _session_id(self._token(cookie))
        if sid is not None:
            users.close_session(self.engine, sid)

    def token(self, cookie: str | None) -> str | None:
        """The session token a cookie holds, if it is validly signed (for a password change that keeps it)."""
        return self._token(cookie)


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


class LoginLimiter:
    """Failed logins, limited per (user name, address) and per address, never per user name alone: anyone could
    otherwise keep a known user locked out (five wrong passwords a minute from anywhere kept even the right one at
    429). ``per_minute`` failures of one name from one address block that pair, and four times as many from one
    address block the address, for a minute; each block that follows another within the hour lasts twice as long
    as the one before, up to :data:`LONGEST_BLOCK_S`."""

    LONGEST_BLOCK_S = 3600.0
    ADDRESS_FACTOR = 4

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._blocked: dict[str, tuple[float, float]] = {}  # key -> (until, its length)
        self._lock = threading.Lock()

    def _keys(self, name: str, address: str) -> tuple[tuple[str, int], ...]:
        return ((f"p:{name}\0{address}", self.per_minute), (f"a:{address}", self.per_minute * self.ADDRESS_FACTOR))

    def allowed(self, name: str, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return all(self._blocked.get(k, (0.0, 0.0))[0] <= now for k, _ in self._keys(name, address))

    def failed(self, name: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, limit in self._keys(name, address):
                q = self._failures[key]
                q.append(now)
                while q and now - q[0] > 60:
                    q.popleft()
                if len(q) >= limit:
                    until, length = self._blocked.get(key, (0.0, 0.0))
                    length = min(self.LONGEST_BLOCK_S, length * 2) if now - until < 3600 and length else 60.0
                    self._blocked[key] = (now + length, length)
                    q.clear()
