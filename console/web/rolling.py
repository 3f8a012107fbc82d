"""Rollouts: a release to a set of units in waves, a canary first (console/store/rollouts.py drives them); started
and aborted by an engineer, watched by everyone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from console.store import queries, rollouts
from console.web.deps import PostedEngineer, Viewer, web_of
from contract import payloads

router = APIRouter()


@router.get("/rollouts", response_class=HTMLResponse)
async def rollouts_page(request: Request, user: Viewer) -> HTMLResponse:
    web = web_of(request)
    rows = await asyncio.to_thread(rollouts.listing, web.engine)
    return web.page(request, "rollouts.html", user, rollouts=rows, error="", form={})


def _number(form: dict[str, str], key: str, default: float, low: float, high: float) -> float:
    raw = form.get(key, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{key}: {raw[:20]!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{key}: {value:g} is not between {low:g} and {high:g}")
    return value


@router.post("/rollouts")
async def start(request: Request, posted: PostedEngineer) -> Response:
    web = web_of(request)
    user, form = posted
    model, units = form.get("model", "").strip(), form.get("units", "").strip()
    try:
        payloads.ReleaseArgs(name=model)  # the contract's rule for a model name, before any unit is asked
        raw_version = form.get("version", "").strip()
        version = int(_number(form, "version", 1, 1, 1e9)) if raw_version else None
        if not units or len(units) > 200:
            raise ValueError("units: give device ids or patterns, as line3-* or a,b,c")
        args: dict[str, Any] = {"model": model, "version": version, "units": units,
                "canary": int(_number(form, "canary", 1, 1, 1000)), "factor": _number(form, "factor", 2.0, 1.0, 100),
                "auto_promote": form.get("auto_promote") == "1",
                "min_compared": int(_number(form, "min_compared", 50, 0, 1e6)),
                "min_agreement": _number(form, "min_agreement", 0.98, 0.0, 1.0),
                "min_reviewed": int(_number(form, "min_reviewed", 0, 0, 500)),
                "max_inference_ms": _number(form, "max_inference_ms", 0.0, 0.0, 10_000)}
        rollout_id = await asyncio.to_thread(lambda: rollouts.create(web.engine, **args, user=user.name))
    except (ValueError, ValidationError) as e:
        rows = await asyncio.to_thread(rollouts.listing, web.engine)
        text = "model: " + e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e).splitlines()[0]
        return web.page(request, "rollouts.html", user, rollouts=rows, error=text, form=form, status=400)
    queries.record(web.engine, user.name, "rollout", json.dumps({"id": rollout_id, **args}))
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
async def rollout_page(request: Request, user: Viewer, rollout_id: str) -> HTMLResponse:
    web = web_of(request)
    r = await asyncio.to_thread(rollouts.get, web.engine, rollout_id)
    if r is None:
        raise HTTPException(404, "no such rollout")
    return web.page(request, "rollout.html", user, r=r)


@router.post("/rollouts/{rollout_id}/abort")
async def abort(request: Request, posted: PostedEngineer, rollout_id: str) -> Response:
    web = web_of(request)
    user, _ = posted
    if await asyncio.to_thread(rollouts.abort, web.engine, rollout_id, f"aborted by {user.name}"):
        queries.record(web.engine, user.name, "rollout_abort", rollout_id)
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
