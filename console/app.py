"""The web console: server-rendered pages (Jinja2, every value escaped), live updates over server-sent events, htmx for
the small interactions, and every asset served from ``static/`` (plants are often air-gapped: no CDN).

This module assembles the application; the pages are routers per resource in :mod:`console.web`. Every route states
its role as a dependency and every POST's dependency checks the CSRF token (a form field, or the ``X-CSRF-Token``
header htmx sends) and that it comes from this origin (``console.web.deps``). Responses carry a strict Content-
Security-Policy (scripts and styles from this origin only), so a value that escaped escaping still could not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from console import auth
from console.web import admin, alerts, fleet, inspecting, quick, reports, reviewing, rolling, sessions, stream
from console.web.deps import NeedLogin, Services, Web, ago, fmt_time, pct, reply_text
from contract.payloads import HEATMAP_METHODS

__all__ = ["Services", "create_app"]

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
ROUTERS = (sessions.router, fleet.router, alerts.router, stream.router, admin.router, reports.router,
           reviewing.router, inspecting.router, rolling.router, quick.router)


def create_app(svc: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.hub.loop = asyncio.get_running_loop()
        yield
        svc.hub.loop = None

    app = FastAPI(title="Line console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(roles=auth.ROLES, ago=ago, fmt_time=fmt_time, pct=pct,
                                 heatmap_methods=HEATMAP_METHODS, reply_text=reply_text)
    app.state.web = Web(svc, templates)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    if svc.cfg.releases_dir is not None:  # units fetch releases here and verify them by themselves (TUF): no login
        app.mount("/releases", StaticFiles(directory=str(svc.cfg.releases_dir)), name="releases")

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
        # The whole address, query included: a link from a mail to one part's review must land on that part.
        where = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': where})}", status_code=303)

    for router in ROUTERS:
        app.include_router(router)
    return app
