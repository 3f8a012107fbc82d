"""Alerts (newest first, what is new since the user last looked, updated live) and the stored images."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse

from console import images
from console.store import queries, review
from console.web.deps import (
    MAX_PAGE,
    Viewer,
    day_span,
    float_or_none,
    need,
    web_of,
)
from contract import topics

router = APIRouter()

ALERTS_SEEN_COOKIE = "alerts_seen"  # the newest alert the browser's user has seen on the alerts page
PAGE = 50


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, user: Viewer, unit: str = "", kind: str = "", day: str = "",
                      page_no: int = Query(1, ge=1, le=MAX_PAGE), rows_only: bool = False) -> HTMLResponse:
    """Alerts, newest first, with a marker on those newer than the user's last look at the first page (kept in a
    cookie); ``rows_only``: just the table's rows, which the page asks for again when the live feed brings an
    alert."""
    web = web_of(request)
    seen = float_or_none(request.cookies.get(ALERTS_SEEN_COOKIE))
    span = day_span(day) if day else None
    day = day if span else ""
    rows, total = await asyncio.to_thread(lambda: queries.alerts(
        web.engine, device_id=unit or None, kind=kind or None, since=span[0] if span else None,
        until=span[1] if span else None, limit=PAGE, offset=(page_no - 1) * PAGE))
    units = await asyncio.to_thread(queries.unit_ids, web.engine)
    response = web.page(request, "_alert_rows.html" if rows_only else "alerts.html", user, alerts=rows, total=total,
                        unit=unit, kind=kind, day=day, page_no=page_no, pages=max(1, -(-total // PAGE)),
                        kinds=topics.ALERT_KINDS, units=units, seen=seen, reviewable=review.ALERT_KINDS)
    if page_no == 1 and not rows_only and rows:
        response.set_cookie(ALERTS_SEEN_COOKIE, str(max(seen or 0.0, max(r["ts"] for r in rows))),
                            max_age=400 * 86400, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
    return response


@router.get("/alerts/{dedup_key}", response_class=HTMLResponse)
async def alert_page(request: Request, user: Viewer, dedup_key: str) -> HTMLResponse:
    web = web_of(request)
    a = await asyncio.to_thread(queries.alert, web.engine, dedup_key)
    if a is None:
        raise HTTPException(404, "no such alert")
    return web.page(request, "alert.html", user, a=a)


@router.get("/images/{sha256}.jpg", dependencies=[Depends(need("viewer"))])
async def image(request: Request, sha256: str) -> Response:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise HTTPException(404, "no such image")
    path = images.path_of(web_of(request).cfg.images_dir, sha256)
    if not path.is_file():
        raise HTTPException(404, "no such image (pruned?)")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
