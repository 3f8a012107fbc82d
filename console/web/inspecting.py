"""Inspect: the original app's page. Photos uploaded, called by the model the console holds, with heatmaps."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from console import auth
from console.inspect import Call
from console.web.deps import (
    Operator,
    PostedOperator,
    csv_response,
    heatmap_method,
    need,
    same_origin,
    web_of,
)

router = APIRouter()


@router.get("/inspect", response_class=HTMLResponse)
async def inspect_page(request: Request, user: Operator) -> HTMLResponse:
    web = web_of(request)
    return web.page(request, "inspect.html", user, models=web.svc.inspector.models(), calls=[], model="", error="")


@router.post("/inspect", response_class=HTMLResponse)
async def inspect(request: Request, user: Operator) -> HTMLResponse:
    """Uploads are checked for their size before the form is read, then for origin and CSRF (the form is read
    here, with its files, not by the POST dependency)."""
    web = web_of(request)
    limit = int(web.cfg.web.max_upload_mb * 1024 * 1024)
    length = request.headers.get("content-length")
    models = web.svc.inspector.models()
    if length is None or not length.isdigit() or int(length) > limit:
        return web.page(request, "inspect.html", user, models=models, calls=[], model="", status=413,
                        error=f"uploads are limited to {web.cfg.web.max_upload_mb:g} MB a request"
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
            calls.append(await asyncio.to_thread(web.svc.inspector.inspect, item.filename or "upload", data,
                                                 model, locate=fields.get("locate") == "on"))
    finally:
        await form.close()  # the spooled upload files
    error = "" if calls else "choose one or more JPEG or PNG files"
    return web.page(request, "inspect.html", user, models=models, calls=calls, model=model, error=error,
                    ids="&".join(f"id={c.id}" for c in calls))


@router.post("/inspect/{upload_id}/heatmap", response_class=HTMLResponse)
async def inspect_heatmap(request: Request, posted: PostedOperator, upload_id: str) -> HTMLResponse:
    web = web_of(request)
    user, form = posted
    said = web.svc.inspector.request_heatmap(upload_id, heatmap_method(form))
    return web.page(request, "_heatmap.html", user, upload_id=upload_id, heat=said)


@router.get("/inspect/{upload_id}/heatmap", response_class=HTMLResponse)
async def inspect_heatmap_state(request: Request, user: Operator, upload_id: str) -> HTMLResponse:
    web = web_of(request)
    found = web.svc.inspector.heatmap(upload_id)
    state = "queued" if found is None else "ready" if isinstance(found[1], bytes) else str(found[1])
    return web.page(request, "_heatmap.html", user, upload_id=upload_id, heat=state)


@router.get("/inspect/{upload_id}/heatmap.jpg", dependencies=[Depends(need("operator"))])
async def inspect_heatmap_image(request: Request, upload_id: str) -> Response:
    found = web_of(request).svc.inspector.heatmap(upload_id)
    if found is None or not isinstance(found[1], bytes):
        raise HTTPException(404, "no heatmap (yet)")
    return Response(found[1], media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@router.get("/inspect/calls.csv", dependencies=[Depends(need("operator"))])
async def inspect_csv(request: Request) -> Response:
    inspector = web_of(request).svc.inspector
    rows = []
    for upload_id in request.query_params.getlist("id"):
        c = inspector.calls.get(upload_id)
        if c is not None:
            rows.append({"file": c.name, "model": c.model, "label": c.label, "p_defect": c.p_defect,
                         "confidence": c.confidence, "low_confidence": c.low_confidence,
                         "threshold": c.threshold, "width": c.width, "height": c.height, "error": c.error,
                         **{f"{k}_ms": v for k, v in c.timings_ms.items()}})
    return csv_response(rows, "inspect")
