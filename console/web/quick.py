"""One-time review links from the relay's mails (contract/links.py): a defect's call marked right, or a false alarm,
by whoever got the mail, without a login. Opening the link only shows what it would record and asks (mail scanners
and previews open links); the button records it once, in the name of the mail's recipients, audited."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import IntegrityError

from console.store import queries
from console.store import schema as s
from console.web.deps import same_origin, web_of
from console.web.reviewing import apply_verdict
from contract import links

router = APIRouter()
WORDS = {"right": "the call was right: defective", "wrong_good": "a false alarm: the part is good"}


def _link(request: Request, token: str) -> links.Link:
    path = web_of(request).cfg.web.mail_link_key_file
    if path is None:
        raise HTTPException(404, "this console takes no review links from mails")
    try:
        return links.verify(links.read_key(path), token)
    except links.LinkError as e:
        raise HTTPException(400, str(e)) from None


@router.get("/quick/{token}", response_class=HTMLResponse)
async def ask(request: Request, token: str) -> HTMLResponse:
    link = _link(request, token)
    return web_of(request).page(request, "quick.html", None, link=link, token=token, words=WORDS[link.verdict],
                                done="")


@router.post("/quick/{token}", response_class=HTMLResponse)
async def record(request: Request, token: str, confirm: str = Form("")) -> HTMLResponse:
    same_origin(request)  # the button on this console's own page, not a form elsewhere
    web = web_of(request)
    link = _link(request, token)
    if confirm != "1":
        raise HTTPException(400, "use the button on the link's page")
    try:
        with web.engine.begin() as conn:  # once: the nonce is the key
            conn.execute(s.mail_links.insert().values(nonce=link.nonce[:32], used_at=time.time(),
                                                      device_id=link.device_id, frame_id=link.frame_id,
                                                      verdict=link.verdict, recipients=link.to))
    except IntegrityError:
        raise HTTPException(409, "this link was used already; the review is in the console") from None
    who = f"mail to {link.to}"[:64]
    try:
        await apply_verdict(web, who, link.device_id, link.frame_id, link.verdict, "from the alert mail")
    except (ValueError, LookupError) as e:
        raise HTTPException(400, str(e)) from None
    await asyncio.to_thread(queries.record, web.engine, who, "mail_review",
                            f"{link.device_id} {link.frame_id}: {link.verdict}")
    return web.page(request, "quick.html", None, link=link, token=token, words=WORDS[link.verdict], done="1")
