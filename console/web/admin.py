"""Users (admins) and the audit (engineers): who may do what, and who did what."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from console import auth
from console.store import queries
from console.store import users as user_store
from console.web.deps import MAX_PAGE, Admin, Engineer, PostedAdmin, web_of

router = APIRouter()

AUDIT_PAGE = 100


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, user: Admin) -> HTMLResponse:
    web = web_of(request)
    return web.page(request, "users.html", user, users=user_store.listing(web.engine), error="")


@router.post("/users", response_class=HTMLResponse)
async def users_change(request: Request, posted: PostedAdmin) -> Response:
    web = web_of(request)
    user, form = posted
    name, action = form.get("name", ""), form.get("action", "")
    try:
        if action == "add":
            auth.add_user(web.engine, name, form.get("password", ""), form.get("role", "viewer"))
        elif action == "role":
            auth.set_role(web.engine, name, form.get("role", "viewer"), disabled=form.get("disabled") == "1")
        elif action == "password":
            auth.set_password(web.engine, name, form.get("password", ""))  # and their sessions end
        else:
            raise auth.AuthError("unknown action")
    except auth.AuthError as e:
        return web.page(request, "users.html", user, users=user_store.listing(web.engine), error=str(e), status=400)
    queries.record(web.engine, user.name, f"user_{action}", f"{name} {form.get('role', '')}".strip())
    return RedirectResponse("/users", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, user: Engineer, who: str = "", unit: str = "", action: str = "",
                     page_no: int = Query(1, ge=1, le=MAX_PAGE)) -> HTMLResponse:
    """Commands and logins and changes, newest first, 100 of each a page, filtered by who, unit or action (a
    command's name, or an audit action such as login_failed)."""
    web = web_of(request)
    offset = (page_no - 1) * AUDIT_PAGE
    commands = await asyncio.to_thread(lambda: queries.commands(
        web.engine, device_id=unit or None, user=who or None, command=action or None, limit=AUDIT_PAGE,
        offset=offset))
    events = [] if unit else await asyncio.to_thread(lambda: queries.audit(
        web.engine, limit=AUDIT_PAGE, offset=offset, user=who or None, action=action or None))
    return web.page(request, "audit.html", user, commands=commands, events=events, who=who, unit=unit,
                    action=action, page_no=page_no,
                    more=len(commands) == AUDIT_PAGE or len(events) == AUDIT_PAGE)
