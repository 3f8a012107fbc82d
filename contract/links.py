"""Signed one-time links in alert mails: "right" or "false alarm" on a part's call, from the mail itself.

The relay signs, the console verifies, with a key both are given (HMAC-SHA256; a file readable by the two services
only). A link names the unit, the frame, the verdict, whom the mail went to, when it expires and a random nonce; the
console records each nonce it accepts, so a link works once. Opening a link only shows what it would record (mail
scanners open links), a button on that page records it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from contract import topics

VERDICTS = ("right", "wrong_good")  # the call was right; the part was good (a false alarm)


class LinkError(ValueError):
    """A link that is forged, damaged or expired; the message says which, for the person who opened it."""


@dataclass(frozen=True)
class Link:
    device_id: str
    frame_id: str
    verdict: str
    to: str  # whom the mail went to: who clicked is one of them, the audit says so
    expires: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: a link key of at least 32 bytes (e.g. openssl rand -hex 32 > {path.name})")
    return key


def sign(key: bytes, device_id: str, frame_id: str, verdict: str, to: str, valid_s: float,
         now: float | None = None) -> str:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}")
    body = {"d": device_id, "f": frame_id, "v": verdict, "to": to[:300],
            "exp": round((time.time() if now is None else now) + valid_s), "n": secrets.token_hex(12)}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())}"


def verify(key: bytes, token: str, now: float | None = None) -> Link:
    """The link's content, or :class:`LinkError`."""
    payload, _, mac = token.partition(".")
    if len(token) > 2000 or not payload or not mac:
        raise LinkError("this link is damaged: open the part from the console instead")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, mac):
        raise LinkError("this link was not made by this plant's relay (or was changed)")
    try:
        body = json.loads(_unb64(payload))
        link = Link(str(body["d"]), str(body["f"]), str(body["v"]), str(body["to"]), float(body["exp"]),
                    str(body["n"]))
    except (ValueError, KeyError, TypeError):
        raise LinkError("this link is damaged: open the part from the console instead") from None
    if not (topics.DEVICE_ID.match(link.device_id) and topics.FRAME_ID.match(link.frame_id)
            and link.verdict in VERDICTS):
        raise LinkError("this link is damaged: open the part from the console instead")
    if (time.time() if now is None else now) > link.expires:
        raise LinkError("this link has expired: open the part from the console instead")
    return link
