"""Reports: parts by period, unit and model version; measured quality from reviews; the frames' defect rate, drift
and latency; each as CSV too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from console.store import reports
from console.web.deps import (
    Viewer,
    Web,
    csv_response,
    need,
    web_of,
)

router = APIRouter()


def parts_report(web: Web, by: str, unit: str, *, per_model: bool) -> list[dict[str, Any]]:
    w = web.cfg.web
    return reports.parts(web.engine, by=by if by in reports.PART_SPANS else "hour", device_id=unit or None,
                         shift_starts=tuple(w.shift_starts), tz=reports.zone(w.time_zone), per_model=per_model)


@router.get("/reports", response_class=HTMLResponse)
async def reports_page(request: Request, user: Viewer, by: str = "hour", unit: str = "",
                       model: str = "") -> HTMLResponse:
    web = web_of(request)
    engine = web.engine
    by = by if by in reports.PART_SPANS else "hour"
    parts = await asyncio.to_thread(lambda: parts_report(web, by, unit, per_model=model == "1"))
    quality = await asyncio.to_thread(lambda: reports.quality(engine, device_id=unit or None))
    rates = await asyncio.to_thread(lambda: reports.defect_rate(
        engine, by=by if by != "week" else "day", device_id=unit or None,
        shift_starts=tuple(web.cfg.web.shift_starts)))
    drift = await asyncio.to_thread(lambda: reports.drift(engine, device_id=unit or None))
    lat = await asyncio.to_thread(reports.latency, engine)
    return web.page(request, "reports.html", user, by=by, unit=unit, rates=rates, drift=drift, latency=lat,
                    rates_json=json.dumps(rates), drift_json=json.dumps(drift), parts=parts, per_model=model == "1",
                    quality=quality, spans=list(reports.PART_SPANS),
                    rate_span_s=reports.RATE_SPANS[by if by != "week" else "day"])


@router.get("/reports/{name}.csv", dependencies=[Depends(need("viewer"))])
async def report_csv(request: Request, name: str, by: str = "hour", unit: str = "", model: str = "") -> Response:
    web = web_of(request)
    engine = web.engine
    rows: list[dict[str, Any]]
    if name == "parts":
        rows = await asyncio.to_thread(lambda: parts_report(web, by, unit, per_model=model == "1"))
    elif name == "quality":
        rows = [{k: (f"{v[0]:.4f}-{v[1]:.4f}" if isinstance(v, tuple) else v) for k, v in r.items()}
                for r in await asyncio.to_thread(lambda: reports.quality(engine, device_id=unit or None))]
    elif name == "defect_rate":
        rows = reports.defect_rate(engine, by=by if by in ("hour", "shift", "day") else "hour",
                                   device_id=unit or None, shift_starts=tuple(web.cfg.web.shift_starts))
    elif name == "p_defect":
        d = reports.drift(engine, device_id=unit or None)
        rows = [{"bin": b, "this_week": t, "last_week": w}
                for b, t, w in zip(d["bins"], d["this_week"], d["last_week"], strict=True)]
    elif name == "latency":
        rows = reports.latency(engine)
    else:
        raise HTTPException(404, "no such report")
    return csv_response(rows, name)
