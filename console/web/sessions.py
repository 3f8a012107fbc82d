"""Logging in and out, and a user's own account: password and "sign out everywhere"."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from console import auth
from console.store import queries
from console.web.deps import PostedViewer, Viewer, printable, safe_next, same_origin, web_of

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return web_of(request).page(request, "login.html", None, next=safe_next(next), error="")


@router.post("/login")
async def login(request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")) -> Response:
    web = web_of(request)
    svc, engine = web.svc, web.engine
    same_origin(request)  # a login forced from another site would sign the victim in as the attacker
    address = request.client.host if request.client else "?"
    if not svc.limiter.allowed(name, address):
        queries.record(engine, queries.NOT_SIGNED_IN, "login_limited", f"as {printable(name)} from {address}")
        return web.page(request, "login.html", None, next=safe_next(next),
                        error="Too many failed logins from here; wait a while.", status=429)
    role = await asyncio.to_thread(auth.authenticate, engine, name, password)
    if role is None:
        svc.limiter.failed(name, address)
        queries.record(engine, queries.NOT_SIGNED_IN, "login_failed", f"as {printable(name)} from {address}")
        return web.page(request, "login.html", None, next=safe_next(next), error="Wrong user name or password.")
    queries.record(engine, name, "login", address)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(auth.Sessions.COOKIE, svc.sessions.issue(name), max_age=web.cfg.web.session_max_age_s,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request, posted: PostedViewer) -> Response:
    web = web_of(request)
    user, form = posted
    if form.get("everywhere") == "1":
        auth.end_sessions(web.engine, user.name)
        queries.record(web.engine, user.name, "logout_everywhere", "")
    else:
        web.svc.sessions.end(request.cookies.get(auth.Sessions.COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.Sessions.COOKIE)
    return response


@router.get("/account", response_class=HTMLResponse)
async def account(request: Request, user: Viewer) -> HTMLResponse:
    return web_of(request).page(request, "account.html", user, error="", done=False)


@router.post("/account/password", response_class=HTMLResponse)
async def own_password(request: Request, posted: PostedViewer) -> Response:
    """Any user changes their own password, with the current one; their other sessions end, this one stays."""
    web = web_of(request)
    user, form = posted
    if await asyncio.to_thread(auth.authenticate, web.engine, user.name, form.get("current", "")) is None:
        return web.page(request, "account.html", user, error="The current password is wrong.", done=False,
                        status=400)
    try:
        auth.set_password(web.engine, user.name, form.get("password", ""),
                          keep_session=web.svc.sessions.token(request.cookies.get(auth.Sessions.COOKIE)))
    except auth.AuthError as e:
        return web.page(request, "account.html", user, error=str(e), done=False, status=400)
    queries.record(web.engine, user.name, "own_password", "")
    return web.page(request, "account.html", user, error="", done=True)
