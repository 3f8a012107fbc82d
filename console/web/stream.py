"""The live feed: server-sent events of what units say, to each page that watches, for as long as its session
lasts and the console runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from console.live import LiveHub
from console.web.deps import NeedLogin, need, web_of

router = APIRouter()

LIVE_TICK_S = 0.5  # a live stream notices a shutdown this soon
LIVE_RECHECK_S = 2.0  # and checks its session this often
LIVE_KEEPALIVE_S = 15.0


@router.get("/live", dependencies=[Depends(need("viewer"))])
async def live(request: Request, unit: str = "", kinds: str = "result,metrics,available,status,alert,reply"
               ) -> StreamingResponse:
    web = web_of(request)
    svc = web.svc
    watcher = svc.hub.watch(unit or None, frozenset(kinds.split(",")))

    def still_signed_in() -> bool:
        try:
            web.user_of(request)
            return True
        except NeedLogin:
            return False

    async def stream() -> AsyncIterator[str]:
        """Events as they come; the session is checked again every :data:`LIVE_RECHECK_S`, so a logout, a password
        change or a disabled user ends the stream too (it kept flowing), and a shutdown ends it within
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
