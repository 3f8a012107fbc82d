"""Every channel beyond SMTP, through Apprise: Slack, Teams, Telegram, Matrix, ntfy, Gotify, e-mail-to-SMS gateways,
a plain JSON POST (``json://``) and the rest of its list, each named by one URL in a route's ``notify``.

The relay keeps its own routing, storm control, dedup and durable retries around Apprise: a notification is composed
once (:func:`body`: title, text and the part's picture), queued in SQLite like a mail, and handed to Apprise when it
is due. Apprise says only whether a send worked, so a failure is retried with backoff and dead-lettered after
``delivery.max_attempts`` like a mail the SMTP server keeps refusing; its last log line is the reason kept.
"""

from __future__ import annotations

import base64
import json
import logging

import apprise
from apprise.attachment.memory import AttachMemory

from relay.mailer import TransientError

log = logging.getLogger(__name__)


def body(title: str, text: str, picture: bytes | None, name: str) -> bytes:
    """What the queue keeps of one notification (JSON): sent as is at every attempt."""
    return json.dumps({"title": title, "body": text, "name": name,
                       "picture": base64.b64encode(picture).decode() if picture else None}).encode()


def scheme(url: str) -> str:
    """The service part of a URL, safe to log (its tokens are secrets)."""
    return url.split("://", 1)[0] + "://"


def send(url: str, queued: bytes, timeout_s: float = 20.0) -> None:
    doc = json.loads(queued)
    a = apprise.Apprise()
    if not a.add(url):
        raise TransientError(f"{scheme(url)} URL not accepted by Apprise")
    attach = None
    if doc.get("picture"):
        attach = apprise.AppriseAttachment()
        attach.add(AttachMemory(content=base64.b64decode(doc["picture"]), name=doc["name"], mimetype="image/jpeg"))
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = a.notify(body=doc["body"], title=doc["title"], attach=attach, timeout=timeout_s)
    if not ok:
        lines = [x for x in captured.getvalue().splitlines() if x.strip()]
        reason = lines[-1].split(" - ", 2)[-1] if lines else "no reason given"
        raise TransientError(f"{scheme(url)} notification failed: {reason[:200]}")
