"""The web console: server-rendered pages (Jinja2, every value escaped), live updates over server-sent events, htmx for
the small interactions, and every asset served from ``static/`` (plants are often air-gapped: no CDN).

Every route checks the session and the role on the server; every POST checks the CSRF token (a form field, or the
``X-CSRF-Token`` header htmx sends) and that it comes from this origin. Responses carry a strict Content-Security-
Policy (scripts and styles from this origin only), so a value that escaped escaping still could not run.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import logging
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from console import auth, images, review
from console.auth import Role, User
from console.config import ConsoleConfig
from console.inspect import Call, Inspector
from console.live import LiveHub
from console.store import queries, reports, writer
from console.store import schema as s
from contract import payloads, topics
from contract.payloads import HEATMAP_METHODS

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ALERTS_SEEN_COOKIE = "alerts_seen"  # the newest alert the browser's user has seen on the alerts page
MAX_PAGE = 100_000  # a page number beyond it is refused (a 30-digit one overflowed the database's integer: a 500)
LIVE_TICK_S = 0.5  # a live stream notices a shutdown this soon
LIVE_RECHECK_S = 2.0  # and checks its session this often
LIVE_KEEPALIVE_S = 15.0
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


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


def create_app(svc: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.hub.loop = asyncio.get_running_loop()
        yield
        svc.hub.loop = None

    app = FastAPI(title="Line console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(roles=auth.ROLES, ago=_ago, fmt_time=_fmt_time, pct=_pct,
                                 heatmap_methods=HEATMAP_METHODS, reply_text=_reply_text)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    engine, cfg = svc.engine, svc.cfg

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):  # pages show what a user may see: no shared cache keeps them
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NeedLogin)
    async def to_login(request: Request, _e: NeedLogin) -> Response:
        if request.headers.get("HX-Request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    def user_of(request: Request, role: Role = "viewer") -> User:
        found = svc.sessions.read(request.cookies.get(auth.Sessions.COOKIE))
        if found is None:
            raise NeedLogin()
        name, csrf = found
        current = auth.role_of(engine, name)
        if current is None:
            raise NeedLogin()
        user = User(name, current, csrf)
        if not user.can(role):
            queries.record(engine, name, "refused", f"{request.method} {request.url.path} needs {role}")
            raise HTTPException(403, f"this needs the {role} role; you are {current}")
        return user

    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
            raise HTTPException(403, "cross-origin request refused")

    async def posted(request: Request, role: Role) -> tuple[User, dict[str, str]]:
        """The user behind a POST, after the role, origin and CSRF checks; and its form fields."""
        user = user_of(request, role)
        same_origin(request)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        if not auth.csrf_ok(user.csrf, form.get("csrf") or request.headers.get("x-csrf-token")):
            queries.record(engine, user.name, "refused", f"POST {request.url.path} without a valid CSRF token")
            raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
        return user, form

    def page(request: Request, name: str, user: User | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": user, "state": svc.historian_state(), **ctx},
                                          status_code=status)

    # -- sessions ----------------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", None, next=_safe_next(next), error="")

    @app.post("/login")
    async def login(request: Request, name: str = Form(""), password: str = Form(""),
                    next: str = Form("/")) -> Response:
        same_origin(request)  # a login forced from another site would sign the victim in as the attacker
        address = request.client.host if request.client else "?"
        if not svc.limiter.allowed(name, address):
            queries.record(engine, queries.NOT_SIGNED_IN, "login_limited", f"as {_printable(name)} from {address}")
            return page(request, "login.html", None, next=_safe_next(next),
                        error="Too many failed logins from here; wait a while.", status=429)
        role = await asyncio.to_thread(auth.authenticate, engine, name, password)
        if role is None:
            svc.limiter.failed(name, address)
            queries.record(engine, queries.NOT_SIGNED_IN, "login_failed", f"as {_printable(name)} from {address}")
            return page(request, "login.html", None, next=_safe_next(next), error="Wrong user name or password.")
        queries.record(engine, name, "login", address)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(auth.Sessions.COOKIE, svc.sessions.issue(name), max_age=cfg.web.session_max_age_s,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        user, form = await posted(request, "viewer")
        if form.get("everywhere") == "1":
            auth.end_sessions(engine, user.name)
            queries.record(engine, user.name, "logout_everywhere", "")
        else:
            svc.sessions.end(request.cookies.get(auth.Sessions.COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.Sessions.COOKIE)
        return response

    # -- fleet and units ---------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def fleet(request: Request) -> HTMLResponse:
        user = user_of(request)
        rows = await asyncio.to_thread(queries.fleet, engine)
        return page(request, "fleet.html", user, units=rows)

    @app.get("/units/{device_id}/defective", response_class=HTMLResponse)
    async def unit_defective(request: Request, device_id: str) -> HTMLResponse:
        """The fleet's live cell for one unit, rendered as the page renders it."""
        user = user_of(request)
        rows = await asyncio.to_thread(queries.fleet, engine, None, device_id)
        if not rows:
            raise HTTPException(404, "no such unit")
        return page(request, "_defective.html", user, u=rows[0])

    @app.get("/units/{device_id}", response_class=HTMLResponse)
    async def unit_page(request: Request, device_id: str) -> HTMLResponse:
        user = user_of(request)
        u = await asyncio.to_thread(queries.unit, engine, device_id)
        if u is None:
            raise HTTPException(404, "no such unit")
        results = await asyncio.to_thread(queries.latest_results, engine, device_id, 30)
        recent, _ = await asyncio.to_thread(lambda: queries.alerts(engine, device_id=device_id, limit=8))
        cmds = await asyncio.to_thread(queries.commands, engine, device_id=device_id, limit=10)
        return page(request, "unit.html", user, unit=u, results=results, alerts=recent, commands=cmds,
                    results_json=json.dumps([[r["ts"], r["p_defect"]] for r in reversed(results)]))

    @app.post("/units/{device_id}/commands/{name}", response_class=HTMLResponse)
    async def send_command(request: Request, device_id: str, name: str) -> HTMLResponse:
        user, form = await posted(request, "engineer")
        if not topics.DEVICE_ID.match(device_id) or name not in payloads.COMMAND_ARGS:
            raise HTTPException(404, "no such unit or command")
        args = _command_args(name, form)
        try:  # the unit would refuse it anyway: say so now, and do not send it
            payloads.parse_command(name, json.dumps({**args, "request_id": "console-check"}).encode())
        except payloads.CommandError as e:
            return page(request, "_command.html", user, c={"command": name, "error": str(e), "reply": {}})
        request_id = send(user, device_id, name, args)
        return page(request, "_command.html", user, c=queries.command(engine, request_id))

    @app.get("/commands/{request_id}", response_class=HTMLResponse)
    async def command_row(request: Request, request_id: str) -> HTMLResponse:
        user = user_of(request)
        c = await asyncio.to_thread(queries.command, engine, request_id)
        if c is None:
            raise HTTPException(404, "no such command")
        return page(request, "_command.html", user, c=c)

    # -- alerts and images -------------------------------------------------------------------------------------
    @app.get("/alerts", response_class=HTMLResponse)
    async def alerts_page(request: Request, unit: str = "", kind: str = "", day: str = "",
                          page_no: int = Query(1, ge=1, le=MAX_PAGE), rows_only: bool = False) -> HTMLResponse:
        """Alerts, newest first, with a marker on those newer than the user's last look at the first page (kept in a
        cookie); ``rows_only``: just the table's rows, which the page asks for again when the live feed brings an
        alert."""
        user = user_of(request)
        seen = _float_or_none(request.cookies.get(ALERTS_SEEN_COOKIE))
        since = until = None
        if day:
            try:
                since = time.mktime(time.strptime(day, "%Y-%m-%d"))
                until = since + 86400
            except ValueError:
                day = ""
        limit = 50
        rows, total = await asyncio.to_thread(lambda: queries.alerts(
            engine, device_id=unit or None, kind=kind or None, since=since, until=until, limit=limit,
            offset=(max(page_no, 1) - 1) * limit))
        units = await asyncio.to_thread(queries.unit_ids, engine)
        response = page(request, "_alert_rows.html" if rows_only else "alerts.html", user, alerts=rows, total=total,
                        unit=unit, kind=kind, day=day, page_no=page_no, pages=max(1, -(-total // limit)),
                        kinds=topics.ALERT_KINDS, units=units, seen=seen, reviewable=review.ALERT_KINDS)
        if page_no == 1 and not rows_only and rows:
            response.set_cookie(ALERTS_SEEN_COOKIE, str(max(seen or 0.0, max(r["ts"] for r in rows))),
                                max_age=400 * 86400, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    @app.get("/alerts/{dedup_key}", response_class=HTMLResponse)
    async def alert_page(request: Request, dedup_key: str) -> HTMLResponse:
        user = user_of(request)
        a = await asyncio.to_thread(queries.alert, engine, dedup_key)
        if a is None:
            raise HTTPException(404, "no such alert")
        return page(request, "alert.html", user, a=a)

    @app.get("/images/{sha256}.jpg")
    async def image(request: Request, sha256: str) -> Response:
        user_of(request)
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise HTTPException(404, "no such image")
        path = images.path_of(cfg.images_dir, sha256)
        if not path.is_file():
            raise HTTPException(404, "no such image (pruned?)")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    # -- live ----------------------------------------------------------------------------------------------------
    @app.get("/live")
    async def live(request: Request, unit: str = "", kinds: str = "result,metrics,available,status,alert,reply"
                   ) -> StreamingResponse:
        user_of(request)
        watcher = svc.hub.watch(unit or None, frozenset(kinds.split(",")))

        def still_signed_in() -> bool:
            try:
                user_of(request)
                return True
            except NeedLogin:
                return False

        async def stream() -> AsyncIterator[str]:
            """Events as they come; the session is checked again every :data:`LIVE_RECHECK_S`, so a logout, a
            password change or a disabled user ends the stream too (it kept flowing), and a shutdown ends it within
            :data:`LIVE_TICK_S`."""
            try:
                yield ": live\n\n"
                quiet = checked = time.monotonic()
                while not svc.stopping():
                    try:
                        event = await asyncio.wait_for(watcher.queue.get(), timeout=LIVE_TICK_S)
                    except TimeoutError:
                        event = None
                    now = time.monotonic()
                    if now - checked >= LIVE_RECHECK_S:
                        checked = now
                        if not await asyncio.to_thread(still_signed_in):
                            yield "event: signed-out\ndata: {}\n\n"
                            return
                    if event is not None:
                        quiet = now
                        yield LiveHub.sse(event)
                    elif now - quiet >= LIVE_KEEPALIVE_S:
                        quiet = now
                        yield ": keep-alive\n\n"
            finally:
                svc.hub.unwatch(watcher)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- users and audit ---------------------------------------------------------------------------------------
    @app.get("/users", response_class=HTMLResponse)
    async def users_page(request: Request) -> HTMLResponse:
        user = user_of(request, "admin")
        return page(request, "users.html", user, users=queries.users(engine), error="")

    @app.post("/users", response_class=HTMLResponse)
    async def users_change(request: Request) -> Response:
        user, form = await posted(request, "admin")
        name, action = form.get("name", ""), form.get("action", "")
        try:
            if action == "add":
                auth.add_user(engine, name, form.get("password", ""), form.get("role", "viewer"))
            elif action == "role":
                auth.set_role(engine, name, form.get("role", "viewer"), disabled=form.get("disabled") == "1")
            elif action == "password":
                auth.set_password(engine, name, form.get("password", ""))  # and their sessions end
            else:
                raise auth.AuthError("unknown action")
        except auth.AuthError as e:
            return page(request, "users.html", user, users=queries.users(engine), error=str(e), status=400)
        queries.record(engine, user.name, f"user_{action}", f"{name} {form.get('role', '')}".strip())
        return RedirectResponse("/users", status_code=303)

    @app.post("/account/password", response_class=HTMLResponse)
    async def own_password(request: Request) -> Response:
        """Any user changes their own password, with the current one; their other sessions end, this one stays."""
        user, form = await posted(request, "viewer")
        if await asyncio.to_thread(auth.authenticate, engine, user.name, form.get("current", "")) is None:
            return page(request, "account.html", user, error="The current password is wrong.", done=False,
                        status=400)
        try:
            auth.set_password(engine, user.name, form.get("password", ""),
                              keep_session=svc.sessions.token(request.cookies.get(auth.Sessions.COOKIE)))
        except auth.AuthError as e:
            return page(request, "account.html", user, error=str(e), done=False, status=400)
        queries.record(engine, user.name, "own_password", "")
        return page(request, "account.html", user, error="", done=True)

    @app.get("/account", response_class=HTMLResponse)
    async def account(request: Request) -> HTMLResponse:
        return page(request, "account.html", user_of(request), error="", done=False)

    @app.get("/audit", response_class=HTMLResponse)
    async def audit_page(request: Request, who: str = "", unit: str = "", action: str = "",
                         page_no: int = Query(1, ge=1, le=MAX_PAGE)) -> HTMLResponse:
        """Commands and logins and changes, newest first, 100 of each a page, filtered by who, unit or action (a
        command's name, or an audit action such as login_failed)."""
        user = user_of(request, "engineer")
        limit, offset = 100, (page_no - 1) * 100
        commands = await asyncio.to_thread(lambda: queries.commands(
            engine, device_id=unit or None, user=who or None, command=action or None, limit=limit, offset=offset))
        events = [] if unit else await asyncio.to_thread(lambda: queries.audit(
            engine, limit=limit, offset=offset, user=who or None, action=action or None))
        return page(request, "audit.html", user, commands=commands, events=events, who=who, unit=unit,
                    action=action, page_no=page_no, more=len(commands) == limit or len(events) == limit)

    @app.get("/reports", response_class=HTMLResponse)
    async def reports_page(request: Request, by: str = "hour", unit: str = "", model: str = "") -> HTMLResponse:
        user = user_of(request)
        by = by if by in reports.PART_SPANS else "hour"
        parts = await asyncio.to_thread(lambda: parts_report(by, unit, per_model=model == "1"))
        quality = await asyncio.to_thread(lambda: reports.quality(engine, device_id=unit or None))
        rates = await asyncio.to_thread(lambda: reports.defect_rate(
            engine, by=by if by != "week" else "day", device_id=unit or None,
            shift_starts=tuple(cfg.web.shift_starts)))
        drift = await asyncio.to_thread(lambda: reports.drift(engine, device_id=unit or None))
        lat = await asyncio.to_thread(reports.latency, engine)
        return page(request, "reports.html", user, by=by, unit=unit, rates=rates, drift=drift, latency=lat,
                    rates_json=json.dumps(rates), drift_json=json.dumps(drift), parts=parts, per_model=model == "1",
                    quality=quality,
                    spans=list(reports.PART_SPANS))

    def parts_report(by: str, unit: str, *, per_model: bool) -> list[dict[str, Any]]:
        return reports.parts(engine, by=by if by in reports.PART_SPANS else "hour", device_id=unit or None,
                             shift_starts=tuple(cfg.web.shift_starts), tz=reports.zone(cfg.web.time_zone),
                             per_model=per_model)

    @app.get("/reports/{name}.csv")
    async def report_csv(request: Request, name: str, by: str = "hour", unit: str = "", model: str = "") -> Response:
        user_of(request)
        if name == "parts":
            rows = await asyncio.to_thread(lambda: parts_report(by, unit, per_model=model == "1"))
        elif name == "quality":
            rows = [{k: (f"{v[0]:.4f}-{v[1]:.4f}" if isinstance(v, tuple) else v) for k, v in r.items()}
                    for r in await asyncio.to_thread(lambda: reports.quality(engine, device_id=unit or None))]
        elif name == "defect_rate":
            rows = reports.defect_rate(engine, by=by if by in ("hour", "shift", "day") else "hour",
                                       device_id=unit or None, shift_starts=tuple(cfg.web.shift_starts))
        elif name == "p_defect":
            d = reports.drift(engine, device_id=unit or None)
            rows = [{"bin": b, "this_week": t, "last_week": w}
                    for b, t, w in zip(d["bins"], d["this_week"], d["last_week"], strict=True)]
        elif name == "latency":
            rows = reports.latency(engine)
        else:
            raise HTTPException(404, "no such report")
        return Response(_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})

    # -- review ----------------------------------------------------------------------------------------------------
    def review_filters(params: Any) -> dict[str, Any]:
        day, since = params.get("day", ""), None
        if day:
            try:
                since = time.mktime(time.strptime(day, "%Y-%m-%d"))
            except ValueError:
                day = ""
        state = params.get("state", "waiting")
        frame = params.get("frame", "")
        return {"unit": params.get("unit", ""), "kind": params.get("kind", ""), "model": params.get("model", ""),
                "day": day, "since": since, "state": state if state in ("waiting", "reviewed", "all") else "waiting",
                "frame": frame if topics.FRAME_ID.match(frame) else ""}

    @app.get("/review", response_class=HTMLResponse)
    async def review_page(request: Request) -> HTMLResponse:
        return await review_view(request, user_of(request), review_filters(request.query_params))

    async def review_view(request: Request, user: User, f: dict[str, Any]) -> HTMLResponse:
        items, total = await asyncio.to_thread(lambda: review.queue(
            engine, device_id=f["unit"] or None, kind=f["kind"] or None, model=f["model"] or None,
            since=f["since"], state="all" if f["frame"] else f["state"], limit=13, frame_id=f["frame"] or None))
        unfiltered = f["state"] == "waiting" and not any(f[k] for k in ("unit", "kind", "model", "day", "frame"))
        waiting = total if unfiltered else (await asyncio.to_thread(
            lambda: review.queue(engine, state="waiting", limit=0)))[1]
        query = urlencode({k: v for k, v in f.items() if k != "since" and v})
        return page(request, "review.html", user, items=items, total=total, waiting=waiting, f=f, query=query,
                    kinds=review.REVIEWED_KINDS)

    @app.post("/review")
    async def review_post(request: Request) -> Response:
        user, form = await posted(request, "operator")
        verdict, note = form.get("verdict", ""), form.get("note", "")
        raw = await request.form()
        picked = [str(x) for x in raw.getlist("items")] or [f"{form.get('device_id', '')}|{form.get('frame_id', '')}"]
        for key in picked[:200]:
            device_id, _, frame_id = key.partition("|")
            if not topics.DEVICE_ID.match(device_id) or not topics.FRAME_ID.match(frame_id):
                raise HTTPException(400, "no such item")
            try:
                item = await asyncio.to_thread(functools.partial(
                    review.record, engine, device_id=device_id, frame_id=frame_id, verdict=verdict, note=note,
                    user=user.name, request_id=None))
            except (ValueError, LookupError) as e:
                raise HTTPException(400, str(e)) from None
            if item["truth"] is not None:  # the unit keeps it with the frame while it still buffers it
                send(user, device_id, "feedback", {"frame_id": frame_id, "label": item["truth"], "note": note},
                     review_of=frame_id)
        filters = {k: form.get(k, "") for k in ("unit", "kind", "model", "day", "state")}
        return RedirectResponse("/review?" + urlencode({k: v for k, v in filters.items() if v}), status_code=303)

    @app.post("/review/heatmap", response_class=HTMLResponse)
    async def review_heatmap(request: Request) -> HTMLResponse:
        """A heatmap of a stored frame: asked of the unit (it answers while it still buffers the frame), and made
        here from the stored snapshot when the console's model store has the model; the first to arrive is kept."""
        user, form = await posted(request, "operator")
        device_id, frame_id = form.get("device_id", ""), form.get("frame_id", "")
        method = _heatmap_method(form)
        items, _ = await asyncio.to_thread(lambda: review.queue(engine, device_id=device_id, frame_id=frame_id,
                                                                 state="all", limit=1))
        item = items[0] if items else None
        if item is None:
            raise HTTPException(404, "no such item")
        send(user, device_id, "gradcam", {"frame_id": frame_id, "method": method})
        frame = images.read_frame(cfg.images_dir, item["snapshot"])
        here = await asyncio.to_thread(svc.inspector.heatmap_of, f"{device_id}|{frame_id}", item["model"] or "",
                                       frame, method)
        return page(request, "_review_heat.html", user, device_id=device_id, frame_id=frame_id,
                    heat="asked the unit" + (", and making one here" if here == "queued" else f"; {here}"))

    @app.get("/review/heatmap", response_class=HTMLResponse)
    async def review_heatmap_state(request: Request, device_id: str, frame_id: str) -> HTMLResponse:
        user = user_of(request, "operator")
        found = svc.inspector.heatmap(f"{device_id}|{frame_id}")
        if found is not None and isinstance(found[1], bytes):  # made here: stored like one from the unit
            sha = images.store(cfg.images_dir, found[1])
            await asyncio.to_thread(writer.write, engine, [writer.Item(
                "gradcam_image", device_id, time.time(), key=frame_id, sha256=sha, size=len(found[1]))])
        a = await asyncio.to_thread(lambda: review.queue(engine, device_id=device_id, frame_id=frame_id, state="all",
                                                         limit=1))
        item = a[0][0] if a[0] else None
        heat = "ready" if item and item["heatmap"] else (str(found[1]) if found else "waiting")
        return page(request, "_review_heat.html", user, device_id=device_id, frame_id=frame_id, heat=heat,
                    sha=item["heatmap"] if item else None)

    @app.get("/review/export.zip")
    async def review_export(request: Request) -> Response:
        user = user_of(request, "operator")
        with tempfile.TemporaryDirectory() as tmp:
            counts = await asyncio.to_thread(review.export, engine, cfg.images_dir, Path(tmp) / "reviewed")
            archive = shutil.make_archive(str(Path(tmp) / "reviewed"), "zip", tmp, "reviewed")
            data = Path(archive).read_bytes()
        queries.record(engine, user.name, "export", json.dumps(counts))
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="reviewed.zip"'})

    def send(user: User, device_id: str, name: str, args: dict[str, Any], review_of: str | None = None) -> str:
        """Publish a command through the broker, audited with who sent it; its reply lands in the same row."""
        request_id = f"console-{secrets.token_hex(8)}"
        with engine.begin() as conn:
            conn.execute(s.commands.insert().values(request_id=request_id, ts=time.time(), user=user.name,
                                                    device_id=device_id, command=name, args=json.dumps(args)))
            if review_of:
                conn.execute(s.reviews.update().where(s.reviews.c.device_id == device_id)
                             .where(s.reviews.c.frame_id == review_of).values(feedback_request_id=request_id))
        svc.publish(f"{cfg.mqtt.edge_prefix}/{device_id}/{topics.CMD}/{name}",
                    json.dumps({**args, "request_id": request_id}).encode())
        return request_id

    # -- inspect: the original app's page -----------------------------------------------------------------------
    @app.get("/inspect", response_class=HTMLResponse)
    async def inspect_page(request: Request) -> HTMLResponse:
        user = user_of(request, "operator")
        return page(request, "inspect.html", user, models=svc.inspector.models(), calls=[], model="", error="")

    @app.post("/inspect", response_class=HTMLResponse)
    async def inspect(request: Request) -> HTMLResponse:
        user = user_of(request, "operator")
        limit = int(cfg.web.max_upload_mb * 1024 * 1024)
        length = request.headers.get("content-length")
        models = svc.inspector.models()
        if length is None or not length.isdigit() or int(length) > limit:
            return page(request, "inspect.html", user, models=models, calls=[], model="", status=413,
                        error=f"uploads are limited to {cfg.web.max_upload_mb:g} MB a request"
                        if length and length.isdigit() else "the upload must say its length")
        same_origin(request)
        form = await request.form(max_files=50)
        try:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if not auth.csrf_ok(user.csrf, fields.get("csrf") or request.headers.get("x-csrf-token")):
                raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page")
            model = fields.get("model", "")
            calls: list[Call] = []
            for item in form.getlist("files"):
                if isinstance(item, str):
                    continue
                data = await item.read()
                calls.append(await asyncio.to_thread(svc.inspector.inspect, item.filename or "upload", data,
                                                     model, locate=fields.get("locate") == "on"))
        finally:
            await form.close()  # the spooled upload files
        error = "" if calls else "choose one or more JPEG or PNG files"
        return page(request, "inspect.html", user, models=models, calls=calls, model=model, error=error,
                    ids="&".join(f"id={c.id}" for c in calls))

    @app.post("/inspect/{upload_id}/heatmap", response_class=HTMLResponse)
    async def inspect_heatmap(request: Request, upload_id: str) -> HTMLResponse:
        user, form = await posted(request, "operator")
        said = svc.inspector.request_heatmap(upload_id, _heatmap_method(form))
        return page(request, "_heatmap.html", user, upload_id=upload_id, heat=said)

    @app.get("/inspect/{upload_id}/heatmap", response_class=HTMLResponse)
    async def inspect_heatmap_state(request: Request, upload_id: str) -> HTMLResponse:
        user = user_of(request, "operator")
        found = svc.inspector.heatmap(upload_id)
        state = "queued" if found is None else "ready" if isinstance(found[1], bytes) else str(found[1])
        return page(request, "_heatmap.html", user, upload_id=upload_id, heat=state)

    @app.get("/inspect/{upload_id}/heatmap.jpg")
    async def inspect_heatmap_image(request: Request, upload_id: str) -> Response:
        user_of(request, "operator")
        found = svc.inspector.heatmap(upload_id)
        if found is None or not isinstance(found[1], bytes):
            raise HTTPException(404, "no heatmap (yet)")
        return Response(found[1], media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})

    @app.get("/inspect/calls.csv")
    async def inspect_csv(request: Request) -> Response:
        user_of(request, "operator")
        rows = []
        for upload_id in request.query_params.getlist("id"):
            c = svc.inspector.calls.get(upload_id)
            if c is not None:
                rows.append({"file": c.name, "model": c.model, "label": c.label, "p_defect": c.p_defect,
                             "confidence": c.confidence, "low_confidence": c.low_confidence,
                             "threshold": c.threshold, "width": c.width, "height": c.height, "error": c.error,
                             **{f"{k}_ms": v for k, v in c.timings_ms.items()}})
        return Response(_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="inspect.csv"'})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"historian": svc.historian_state()}

    return app


def _command_args(name: str, form: dict[str, str]) -> dict[str, Any]:
    """A command's arguments from its form; the contract's schema judges them."""
    out: dict[str, Any] = {}
    for key, value in form.items():
        if key == "csrf" or value == "":
            continue
        if key in ("threshold",):
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value  # the schema says what is wrong with it
        elif key in ("band_lo", "band_hi"):
            continue
        else:
            out[key] = value
    if form.get("band_lo") and form.get("band_hi"):
        try:
            out["low_confidence_band"] = [float(form["band_lo"]), float(form["band_hi"])]
        except ValueError:
            out["low_confidence_band"] = [form["band_lo"], form["band_hi"]]
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        w = csv.DictWriter(out, fieldnames=list(rows[0]))
        w.writeheader()
        # Cells a spreadsheet would run as a formula start with '; unit ids cannot, but say so in one place.
        w.writerows({k: f"'{v}" if isinstance(v, str) and v[:1] in "=+-@" else v for k, v in r.items()}
                    for r in rows)
    return out.getvalue()


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _reply_text(c: dict[str, Any]) -> tuple[str, str]:
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


def _printable(text: str) -> str:
    """What a visitor typed, fit for the audit: printable, on one line, bounded, quoted."""
    return repr("".join(c if c.isprintable() else "?" for c in text[:64]))


def _safe_next(target: str) -> str:
    """Only a path on this site: never an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "never"
    d = max(0.0, time.time() - epoch)
    return f"{d:.0f} s ago" if d < 120 else f"{d / 60:.0f} min ago" if d < 7200 else f"{d / 3600:.0f} h ago"


def _fmt_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def _heatmap_method(form: Any) -> str:
    """The form's heatmap method, or "auto" (the model's own) for anything the contract does not name."""
    method = str(form.get("method", "auto"))
    return method if method in HEATMAP_METHODS else "auto"
