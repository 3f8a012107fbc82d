"""The fleet at a glance, each unit's page, and the commands people send to a unit (audited, answered in place)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from console.store import queries
from console.web.deps import PostedEngineer, Viewer, web_of
from contract import payloads, topics

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def fleet(request: Request, user: Viewer) -> HTMLResponse:
    web = web_of(request)
    rows = await asyncio.to_thread(queries.fleet, web.engine)
    return web.page(request, "fleet.html", user, units=rows)


@router.get("/units/{device_id}/defective", response_class=HTMLResponse)
async def unit_defective(request: Request, user: Viewer, device_id: str) -> HTMLResponse:
    """The fleet's live cell for one unit, rendered as the page renders it."""
    web = web_of(request)
    rows = await asyncio.to_thread(queries.fleet, web.engine, None, device_id)
    if not rows:
        raise HTTPException(404, "no such unit")
    return web.page(request, "_defective.html", user, u=rows[0])


@router.get("/units/{device_id}", response_class=HTMLResponse)
async def unit_page(request: Request, user: Viewer, device_id: str) -> HTMLResponse:
    web = web_of(request)
    engine = web.engine
    u = await asyncio.to_thread(queries.unit, engine, device_id)
    if u is None:
        raise HTTPException(404, "no such unit")
    results = await asyncio.to_thread(queries.latest_results, engine, device_id, 30)
    recent, _ = await asyncio.to_thread(lambda: queries.alerts(engine, device_id=device_id, limit=8))
    cmds = await asyncio.to_thread(queries.commands, engine, device_id=device_id, limit=10)
    throughput = await asyncio.to_thread(queries.throughput, engine, device_id)
    return web.page(request, "unit.html", user, unit=u, results=results, alerts=recent, commands=cmds,
                    results_json=json.dumps([[r["ts"], r["p_defect"]] for r in reversed(results)]),
                    throughput_json=json.dumps(throughput),
                    threshold=((u["status"] or {}).get("model") or {}).get("threshold"))


@router.post("/units/{device_id}/commands/{name}", response_class=HTMLResponse)
async def send_command(request: Request, posted: PostedEngineer, device_id: str, name: str) -> HTMLResponse:
    web = web_of(request)
    user, form = posted
    if not topics.DEVICE_ID.match(device_id) or name not in payloads.COMMAND_ARGS:
        raise HTTPException(404, "no such unit or command")
    args = command_args(form)
    try:  # the unit would refuse it anyway: say so now, and do not send it
        payloads.parse_command(name, json.dumps({**args, "request_id": "console-check"}).encode())
    except payloads.CommandError as e:
        return web.page(request, "_command.html", user, c={"command": name, "error": str(e), "reply": {}})
    request_id = web.send(user, device_id, name, args)
    return web.page(request, "_command.html", user, c=queries.command(web.engine, request_id))


@router.get("/commands/{request_id}", response_class=HTMLResponse)
async def command_row(request: Request, user: Viewer, request_id: str) -> HTMLResponse:
    web = web_of(request)
    c = await asyncio.to_thread(queries.command, web.engine, request_id)
    if c is None:
        raise HTTPException(404, "no such command")
    return web.page(request, "_command.html", user, c=c)


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    return {"historian": web_of(request).svc.historian_state()}


def command_args(form: dict[str, str]) -> dict[str, Any]:
    """A command's arguments from its form; the contract's schema judges them."""
    out: dict[str, Any] = {}
    for key, value in form.items():
        if key == "csrf" or value == "":
            continue
        if key in ("threshold", "version"):
            try:
                out[key] = float(value) if key == "threshold" else int(value)
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
