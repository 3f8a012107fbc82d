"""Composing alert and digest mails (the words from :mod:`relay.render`, the pictures inline) and sending them over
SMTP.

Every value from a device is used in a header only after :mod:`relay.intake` checked it, subjects are folded to one
line, and the ``email`` package refuses CR/LF in headers besides; HTML templates escape every value. Failures are
classified for the retry policy: connection problems and 4xx replies are transient, 5xx replies permanent.
"""

from __future__ import annotations

import io
import smtplib
import ssl
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY  # CRLF line ends: smtplib does not fix them in bytes messages
from email.utils import formatdate, make_msgid
from typing import Any

from PIL import Image

from relay.config import RelayConfig
from relay.render import CAPTIONS, Rendered, Renderer, cid


class TransientError(Exception):
    """Try again later (server away, 4xx)."""


class PermanentError(Exception):
    """Retrying cannot help (5xx); the message goes to the dead letters."""


def _base(cfg: RelayConfig, recipients: list[str], subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = cfg.smtp.sender
    msg["To"] = ", ".join(recipients)
    if cfg.smtp.reply_to:
        msg["Reply-To"] = cfg.smtp.reply_to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="defect-relay")
    return msg


def _compose(cfg: RelayConfig, recipients: list[str], r: Rendered, images: list[tuple[str, str, bytes]]) -> bytes:
    """multipart/alternative of the plain text and multipart/related(HTML, its images by Content-ID): the pictures
    show in the mail itself, as every common client renders ``cid:`` references; (Content-ID, file name, JPEG)."""
    msg = _base(cfg, recipients, r.subject)
    msg.set_content(r.text)
    msg.add_alternative(r.html, subtype="html")
    html_part = msg.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    for content_id, filename, data in images:
        html_part.add_related(data, maintype="image", subtype="jpeg", cid=f"<{content_id}>", filename=filename,
                              disposition="inline")
    return msg.as_bytes(policy=SMTP_POLICY)


def alert_mail(cfg: RelayConfig, renderer: Renderer, alert: dict[str, Any], evidence: dict[str, bytes],
               recipients: list[str], escalated_after_min: float | None = None) -> bytes:
    shown = [k for k in CAPTIONS if k in evidence]
    frame = alert.get("frame_id") or ""
    return _compose(cfg, recipients, renderer.alert(alert, shown, escalated_after_min, ", ".join(recipients)),
                    [(cid(k, frame), f"{frame}.{k}.jpg", evidence[k]) for k in shown])


def thumbnail(jpeg: bytes, side: int = 320) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as src:
        small = src.convert("RGB")
    small.thumbnail((side, side))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()


def digest_mail(cfg: RelayConfig, renderer: Renderer, device_id: str, kind: str, alerts: list[dict[str, Any]],
                thumbnails: list[tuple[str, bytes]], recipients: list[str]) -> bytes:
    r = renderer.digest(device_id, kind, alerts, [frame_id for frame_id, _ in thumbnails])
    return _compose(cfg, recipients, r, [(cid("thumb", f), f"{f}.thumb.jpg", data) for f, data in thumbnails])


def send(cfg: RelayConfig, recipients: list[str], message: bytes, password: str) -> None:
    s = cfg.smtp
    context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    try:
        if s.security == "ssl":
            server: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=context)
        else:
            server = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        with server:
            if s.security == "starttls":
                server.starttls(context=context)
            if s.username:
                server.login(s.username, password)
            server.sendmail(s.sender, recipients, message)
    except smtplib.SMTPRecipientsRefused as e:
        codes = [code for code, _ in e.recipients.values()]
        raise (PermanentError if all(c >= 500 for c in codes) else TransientError)(f"recipients refused: {codes}") \
            from None
    except smtplib.SMTPAuthenticationError as e:  # often a configuration being fixed: retry, then dead-letter
        raise TransientError(f"SMTP authentication failed: {e.smtp_code}") from None
    except smtplib.SMTPResponseException as e:
        text = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        err = f"SMTP {e.smtp_code}: {text[:200]}"
        raise (PermanentError if e.smtp_code >= 500 else TransientError)(err) from None
    except (OSError, smtplib.SMTPException) as e:
        raise TransientError(f"SMTP {s.host}:{s.port}: {e}") from None
