"""Review: people say whether the units' calls were right, one key per verdict, and the reviewed frames become a
data set (``console.store.review`` holds the queue and the export)."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from console import commands, images
from console.auth import User
from console.store import queries, review, writer
from console.web.deps import Operator, PostedOperator, Viewer, Web, day_span, heatmap_method, web_of
from contract import payloads, topics

router = APIRouter()

FILTERS = ("unit", "kind", "model", "day", "state")


def review_filters(params: Any) -> dict[str, Any]:
    day = params.get("day", "")
    span = day_span(day) if day else None
    state = params.get("state", "waiting")
    frame = params.get("frame", "")
    return {"unit": params.get("unit", ""), "kind": params.get("kind", ""), "model": params.get("model", ""),
            "day": day if span else "", "since": span[0] if span else None,
            "state": state if state in ("waiting", "reviewed", "all") else "waiting",
            "frame": frame if topics.FRAME_ID.match(frame) else ""}


async def apply_verdict(web: Web, who: str, device_id: str, frame_id: str, verdict: str, note: str) -> None:
    """A verdict, wherever it was given (the review page, a mail's link): stored, announced for the relay (which
    stops escalating it), and sent to the unit as feedback. ValueError or LookupError for one that cannot be."""
    item = await asyncio.to_thread(functools.partial(
        review.record, web.engine, device_id=device_id, frame_id=frame_id, verdict=verdict, note=note, user=who,
        request_id=None))
    reviewed = payloads.Reviewed(device_id=web.cfg.id, unit=device_id, frame_id=frame_id, verdict=verdict, by=who[:100])
    web.svc.publish(f"{web.cfg.mqtt.console_prefix}/{web.cfg.id}/{topics.REVIEWED}", payloads.dumps(reviewed))
    if item["truth"] is not None:  # the unit keeps it with the frame while it still buffers it
        commands.send(web.engine, web.svc.publish, web.cfg.mqtt.edge_prefix, who, device_id, "feedback",
                      {"frame_id": frame_id, "label": item["truth"], "note": note}, review_of=frame_id)


@router.get("/review", response_class=HTMLResponse)
async def review_page(request: Request, user: Viewer) -> HTMLResponse:
    return await _queue_page(request, user, review_filters(request.query_params))


async def _queue_page(request: Request, user: User, f: dict[str, Any]) -> HTMLResponse:
    web = web_of(request)
    items, total = await asyncio.to_thread(lambda: review.queue(
        web.engine, device_id=f["unit"] or None, kind=f["kind"] or None, model=f["model"] or None,
        since=f["since"], state="all" if f["frame"] else f["state"], limit=13, frame_id=f["frame"] or None))
    unfiltered = f["state"] == "waiting" and not any(f[k] for k in ("unit", "kind", "model", "day", "frame"))
    waiting = total if unfiltered else (await asyncio.to_thread(
        lambda: review.queue(web.engine, state="waiting", limit=0)))[1]
    query = urlencode({k: v for k, v in f.items() if k != "since" and v})
    return web.page(request, "review.html", user, items=items, total=total, waiting=waiting, f=f, query=query,
                    kinds=review.REVIEWED_KINDS)


@router.post("/review")
async def review_post(request: Request, posted: PostedOperator) -> Response:
    web = web_of(request)
    user, form = posted
    verdict, note = form.get("verdict", ""), form.get("note", "")
    raw = await request.form()
    picked = [str(x) for x in raw.getlist("items")] or [f"{form.get('device_id', '')}|{form.get('frame_id', '')}"]
    for key in picked[:200]:
        device_id, _, frame_id = key.partition("|")
        if not topics.DEVICE_ID.match(device_id) or not topics.FRAME_ID.match(frame_id):
            raise HTTPException(400, "no such item")
        try:
            await apply_verdict(web, user.name, device_id, frame_id, verdict, note)
        except (ValueError, LookupError) as e:
            raise HTTPException(400, str(e)) from None
    filters = {k: form.get(k, "") for k in FILTERS}
    url = "/review?" + urlencode({k: v for k, v in filters.items() if v})
    if request.headers.get("HX-Request") == "true":  # the next item at once: a redirect cost a second round trip
        page = await _queue_page(request, user, review_filters(filters))
        page.headers["HX-Replace-Url"] = url
        return page
    return RedirectResponse(url, status_code=303)


@router.post("/review/heatmap", response_class=HTMLResponse)
async def review_heatmap(request: Request, posted: PostedOperator) -> HTMLResponse:
    """A heatmap of a stored frame: asked of the unit (it answers while it still buffers the frame), and made here
    from the stored snapshot when the console's model store has the model; the first to arrive is kept."""
    web = web_of(request)
    user, form = posted
    device_id, frame_id = form.get("device_id", ""), form.get("frame_id", "")
    method = heatmap_method(form)
    items, _ = await asyncio.to_thread(lambda: review.queue(web.engine, device_id=device_id, frame_id=frame_id,
                                                             state="all", limit=1))
    item = items[0] if items else None
    if item is None:
        raise HTTPException(404, "no such item")
    web.send(user, device_id, "gradcam", {"frame_id": frame_id, "method": method})
    frame = images.read_frame(web.cfg.images_dir, item["snapshot"])
    here = await asyncio.to_thread(web.svc.inspector.heatmap_of, f"{device_id}|{frame_id}", item["model"] or "",
                                   frame, method)
    return web.page(request, "_review_heat.html", user, device_id=device_id, frame_id=frame_id,
                    heat="asked the unit" + (", and making one here" if here == "queued" else f"; {here}"))


@router.get("/review/heatmap", response_class=HTMLResponse)
async def review_heatmap_state(request: Request, user: Operator, device_id: str, frame_id: str) -> HTMLResponse:
    web = web_of(request)
    found = web.svc.inspector.heatmap(f"{device_id}|{frame_id}")
    if found is not None and isinstance(found[1], bytes):  # made here: stored like one from the unit
        sha = images.store(web.cfg.images_dir, found[1])
        await asyncio.to_thread(writer.write, web.engine, [writer.Item(
            "gradcam_image", device_id, time.time(), key=frame_id, sha256=sha, size=len(found[1]))])
    a = await asyncio.to_thread(lambda: review.queue(web.engine, device_id=device_id, frame_id=frame_id,
                                                     state="all", limit=1))
    item = a[0][0] if a[0] else None
    heat = "ready" if item and item["heatmap"] else (str(found[1]) if found else "waiting")
    return web.page(request, "_review_heat.html", user, device_id=device_id, frame_id=frame_id, heat=heat,
                    sha=item["heatmap"] if item else None)


@router.get("/review/export.zip")
async def review_export(request: Request, user: Operator) -> Response:
    web = web_of(request)
    with tempfile.TemporaryDirectory() as tmp:
        counts = await asyncio.to_thread(review.export, web.engine, web.cfg.images_dir, Path(tmp) / "reviewed")
        archive = shutil.make_archive(str(Path(tmp) / "reviewed"), "zip", tmp, "reviewed")
        data = Path(archive).read_bytes()
    queries.record(web.engine, user.name, "export", json.dumps(counts))
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="reviewed.zip"'})
