"""Composing alert and digest mails (plain text and escaped HTML, evidence attached) and sending them over SMTP.

Every value from a device is used in a header only after :mod:`relay.intake` checked it, and the ``email`` package
refuses CR/LF in headers besides. HTML bodies escape every value. Failures are classified for the retry policy:
connection problems and 4xx replies are transient, 5xx replies permanent.
"""

from __future__ import annotations

import html
import io
import smtplib
import ssl
import string
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY  # CRLF line ends: smtplib does not fix them in bytes messages
from email.utils import formatdate, make_msgid
from typing import Any

from PIL import Image

from relay.config import RelayConfig


class TransientError(Exception):
    """Try again later (server away, 4xx)."""


class PermanentError(Exception):
    """Retrying cannot help (5xx); the message goes to the dead letters."""


def _fields(alert: dict[str, Any]) -> dict[str, str]:
    """Printable one-line values for templates (a value never carries a line break into a header)."""
    out = {}
    for k, v in alert.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, (dict, list)):
            continue
        out[k] = " ".join(str(v).split())[:200]
    return out


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


def _table(rows: list[tuple[str, str]]) -> tuple[str, str]:
    text = "\n".join(f"{k}: {v}" for k, v in rows)
    cells = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return text, f"<table>{cells}</table>"


# What each kind of alert means to the person reading the mail, and the fields that tell its story.
_MEANING = {
    "defect": ("The unit called a part defective.",
               ("label", "p_defect", "confidence", "threshold", "model", "frame_id")),
    "low_confidence": ("The unit was unsure about a part (p_defect inside the low-confidence band): a person should "
                       "look at it.", ("label", "p_defect", "confidence", "threshold", "model", "frame_id")),
    "camera_offline": ("The unit has had no frame from its camera, so it is not inspecting. Check the camera, its "
                       "cable and the unit's journal.", ("since", "error")),
    "model_error": ("The model failed on frames: those parts were not inspected. The unit's journal has the details.",
                    ("frame_errors", "error", "model")),
}


def subject_of(cfg: RelayConfig, fields: dict[str, str]) -> str:
    kind = fields.get("kind", "")
    t = cfg.templates
    template = {"camera_offline": t.camera_offline_subject, "model_error": t.model_error_subject}.get(kind, t.subject)
    defaults = {"label": "?", "p_defect": "?", "since": "?", "frame_errors": "?", "error": ""}
    return " ".join(string.Template(template).safe_substitute({**defaults, **fields}).split())


def alert_mail(cfg: RelayConfig, alert: dict[str, Any], evidence: dict[str, bytes], recipients: list[str]) -> bytes:
    f = _fields(alert)
    subject = subject_of(cfg, f)
    meaning, story = _MEANING.get(f.get("kind", ""), ("", ()))
    keys = ("device_id", "kind", *story, "ts", "dedup_key")
    text, table = _table([(k, f[k]) for k in keys if f.get(k)])
    msg = _base(cfg, recipients, subject)
    attached = ", ".join(sorted(evidence)) or "none"
    msg.set_content(f"{subject}\n\n{meaning}\n\n{text}\n\nattached: {attached}\n")
    msg.add_alternative(f"<html><body><h3>{html.escape(subject)}</h3><p>{html.escape(meaning)}</p>{table}"
                        f"<p>attached: {html.escape(attached)}</p></body></html>", subtype="html")
    frame = f.get("frame_id", "frame")
    for kind, data in sorted(evidence.items()):
        msg.add_attachment(data, maintype="image", subtype="jpeg", filename=f"{frame}.{kind}.jpg")
    return msg.as_bytes(policy=SMTP_POLICY)


def thumbnail(jpeg: bytes, side: int = 160) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as src:
        small = src.convert("RGB")
    small.thumbnail((side, side))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()


def digest_mail(cfg: RelayConfig, device_id: str, kind: str, alerts: list[dict[str, Any]],
                thumbnails: list[tuple[str, bytes]], recipients: list[str]) -> bytes:
    first, last = alerts[0], alerts[-1]
    span = max(0.0, last["received"] - first["received"])
    subject = string.Template(cfg.templates.digest_subject).safe_substitute(
        {"kind": kind, "device_id": device_id, "count": str(len(alerts)), "minutes": f"{max(span / 60, 0.1):.1f}"})
    when = [datetime.fromtimestamp(a["received"], timezone.utc).strftime("%H:%M:%S") for a in (first, last)]
    rows = [("device_id", device_id), ("kind", kind), ("alerts", str(len(alerts))),
            ("first frame", f"{first.get('frame_id') or '-'} at {when[0]} UTC"),
            ("last frame", f"{last.get('frame_id') or '-'} at {when[1]} UTC")]
    text, table = _table(rows)
    msg = _base(cfg, recipients, subject)
    msg.set_content(f"{subject}\n\n{text}\n\nThese alerts came faster than the cooldown of "
                    f"{cfg.storm.cooldown_s:.0f} s, so they are summarised here.\n")
    msg.add_alternative(f"<html><body><h3>{html.escape(subject)}</h3>{table}</body></html>", subtype="html")
    for frame_id, data in thumbnails:
        msg.add_attachment(data, maintype="image", subtype="jpeg", filename=f"{frame_id}.thumb.jpg")
    return msg.as_bytes(policy=SMTP_POLICY)


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
