"""What every route depends on: the running console's services, the user behind a request (``need``), the checks of
a POST (``posting``: role, origin, CSRF), the page renderer, and a command sent through the broker, audited.

Every route states its role as a FastAPI dependency, so a route cannot forget it: ``need("operator")`` answers a
request without a session with a redirect to the login page, and one with too small a role with 403, audited.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from console import auth, commands
from console.auth import Role, User
from console.config import ConsoleConfig
from console.inspect import Inspector
from console.live import LiveHub
from console.store import queries
from contract.payloads import HEATMAP_METHODS

MAX_PAGE = 100_000  # a page number beyond it is refused (a 30-digit one overflowed the database's integer: a 500)

Posted = tuple[User, dict[str, str]]


class Services:
    """What the pages need from the running console (the store, the live hub, a way to publish commands)."""

    def __init__(self, cfg: ConsoleConfig, engine: Engine, hub: LiveHub,
                 publish: Callable[[str, bytes], None], historian_state: Callable[[], str] = lambda: "ok",
                 stopping: Callable[[], bool] = lambda: False):
        self.cfg, self.engine, self.hub = cfg, engine, hub
        self.inspector = Inspector(cfg.models_dir)
        self.publish = publish  # (topic, payload): QoS 1 through the console's own MQTT connection
        self.historian_state = historian_state
        self.stopping = stopping  # the server is shutting down: open live streams end (they held SIGTERM 3.6 s)
        self.sessions = auth.Sessions(engine, cfg.secret_key(), cfg.web.session_max_age_s)
        self.limiter = auth.LoginLimiter(cfg.web.login_attempts_per_minute)


class NeedLogin(Exception):  # noqa: N818 - reads as "raise NeedLogin"
    pass


@dataclass
class Web:
    """The console as its routes see it: ``request.app.state.web``."""

    svc: Services
    templates: Jinja2Templates

    @property
    def engine(self) -> Engine:
        return self.svc.engine

    @property
    def cfg(self) -> ConsoleConfig:
        return self.svc.cfg

    def user_of(self, request: Request, role: Role = "viewer") -> User:
        """The user behind ``request``, with at least ``role``: the session and the role are read from the store on
        every request, so a logout, a disabled user or a changed role takes effect at once."""
        found = self.svc.sessions.read(request.cookies.get(auth.Sessions.COOKIE))
        if found is None:
            raise NeedLogin()
        name, csrf = found
        current = auth.role_of(self.engine, name)
        if current is None:
            raise NeedLogin()
        user = User(name, current, csrf)
        if not user.can(role):
            queries.record(self.engine, name, "refused", f"{request.method} {request.url.path} needs {role}")
            raise HTTPException(403, f"this needs the {role} role; you are {current}")
        return user

    def page(self, request: Request, name: str, user: User | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(
            request, name, {"user": user, "state": self.svc.historian_state(), **ctx}, status_code=status)

    def send(self, user: User, device_id: str, name: str, args: dict[str, Any], review_of: str | None = None) -> str:
        """Publish a command through the broker, audited with who sent it; its reply lands in the same row."""
        return commands.send(self.engine, self.svc.publish, self.cfg.mqtt.edge_prefix, user.name, device_id, name,
                             args, review_of)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
        raise HTTPException(403, "cross-origin request refused")


def need(role: Role) -> Callable[[Request], User]:
    """A dependency: the user behind the request, with at least ``role``."""
    def user(request: Request) -> User:
        return web_of(request).user_of(request, role)
    return user


def posting(role: Role) -> Callable[[Request], Awaitable[Posted]]:
    """A dependency for a POST: the user (``role`` at least), after the origin and CSRF checks, and the form's text
    fields."""
    async def posted(request: Request) -> Posted:
        web = web_of(request)
        user = web.user_of(request, role)
        same_origin(request)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not auth.csrf_ok(user.csrf, form.get("csrf") or request.headers.get("x-csrf-token")):
            queries.record(web.engine, user.name, "refused", f"POST {request.url.path} without a valid CSRF token")
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return user, form
    return posted


def csv_response(rows: list[dict[str, Any]], name: str) -> Response:
    out = io.StringIO()
    if rows:
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        # Cells a spreadsheet would run as a formula start with '; unit ids cannot, but say so in one place.
        w.writerows({k: f"'{v}" if isinstance(v, str) and v[:1] in "=+-@" else v for k, v in r.items()}
                    for r in rows)
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def float_or_none(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def day_span(day: str) -> tuple[float, float] | None:
    """The local day ``YYYY-MM-DD`` as (start, end) epoch seconds, or None for anything else."""
    try:
        start = time.mktime(time.strptime(day, "%Y-%m-%d"))
    except (ValueError, OverflowError):
        return None
    return start, start + 86400


def reply_text(c: dict[str, Any]) -> tuple[str, str]:
    """A command's reply as a person reads it: (css class, text). Feedback for a frame the unit no longer buffers is
    not a failure: the verdict is stored here; only the unit's copy of the frame is missing (it was shown as a red
    "refused")."""
    reply = c.get("reply") or {}
    if c.get("reply_ok"):
        return "ok", f"ok: {reply.get('result', '')}"
    error = str(reply.get("error", ""))
    if c.get("command") == "feedback" and "no longer buffered" in error:
        return "note", "verdict stored here; the unit no longer had the frame to keep with it"
    return "error", f"refused: {error}"


def printable(text: str) -> str:
    """What a visitor typed, fit for the audit: printable, on one line, bounded, quoted."""
    return repr("".join(c if c.isprintable() else "?" for c in text[:64]))


def safe_next(target: str) -> str:
    """Only a path on this site: never an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def ago(epoch: float | None) -> str:
    if not epoch:
        return "never"
    d = max(0.0, time.time() - epoch)
    return f"{d:.0f} s ago" if d < 120 else f"{d / 60:.0f} min ago" if d < 7200 else f"{d / 3600:.0f} h ago"


def fmt_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""


def pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def heatmap_method(form: Any) -> str:
    """The form's heatmap method, or "auto" (the model's own) for anything the contract does not name."""
    method = str(form.get("method", "auto"))
    return method if method in HEATMAP_METHODS else "auto"


# The dependencies routes declare: ``user: Operator`` is the signed-in user, with at least the operator role.
Viewer = Annotated[User, Depends(need("viewer"))]
Operator = Annotated[User, Depends(need("operator"))]
Engineer = Annotated[User, Depends(need("engineer"))]
Admin = Annotated[User, Depends(need("admin"))]
# And a POST's: the user and the form's fields, after the role, origin and CSRF checks.
PostedViewer = Annotated[Posted, Depends(posting("viewer"))]
PostedOperator = Annotated[Posted, Depends(posting("operator"))]
PostedEngineer = Annotated[Posted, Depends(posting("engineer"))]
PostedAdmin = Annotated[Posted, Depends(posting("admin"))]
