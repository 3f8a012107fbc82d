"""What the relay accepts from the fleet, checked before anything is stored or used in a mail header.

Device ids, kinds, frame ids and dedup keys are matched against strict patterns (no CR/LF, bounded length), the
device in the payload must be the one in the topic, and payloads over the size limits are refused. A refused
message is counted by reason and acknowledged (retrying it would not make it valid); it never becomes a mail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edge.mqtt import topics

FRAME_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
DEDUP_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


class Rejected(ValueError):  # noqa: N818 - reads as "raise Rejected(reason)"
    """The message is not acceptable; ``reason`` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Incoming:
    what: str  # alert | snapshot | gradcam
    device_id: str
    frame_id: str | None  # the topic's frame id, for images


def route_topic(edge_prefix: str, topic: str) -> Incoming:
    """Split ``<prefix>/<device>/alert`` or ``<prefix>/<device>/{snapshot,gradcam}/<frame_id>``."""
    head = edge_prefix + "/"
    if not topic.startswith(head):
        raise Rejected("bad_topic", topic[:120])
    parts = topic[len(head):].split("/")
    if not topics.DEVICE_ID.match(parts[0]):
        raise Rejected("bad_device_id", repr(parts[0][:80]))
    if parts[1:] == [topics.ALERT]:
        return Incoming("alert", parts[0], None)
    if len(parts) == 3 and parts[1] in (topics.SNAPSHOT, topics.GRADCAM):
        if not FRAME_ID.match(parts[2]):
            raise Rejected("bad_frame_id", repr(parts[2][:80]))
        return Incoming(parts[1], parts[0], parts[2])
    raise Rejected("bad_topic", topic[:120])


def parse_alert(device_id: str, payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise Rejected("oversize", f"alert of {len(payload)} bytes > {max_bytes}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected("not_json", "alert payload is not JSON") from None
    if not isinstance(data, dict):
        raise Rejected("not_json", "alert payload is not a JSON object")
    if data.get("device_id") != device_id:
        raise Rejected("device_mismatch", f"payload device {str(data.get('device_id'))[:80]!r} != topic {device_id}")
    if data.get("kind") not in topics.ALERT_KINDS:
        raise Rejected("bad_field", f"kind {str(data.get('kind'))[:40]!r}")
    if not isinstance(data.get("dedup_key"), str) or not DEDUP_KEY.match(data["dedup_key"]):
        raise Rejected("bad_field", "dedup_key")
    frame = data.get("frame_id")
    if frame is not None and (not isinstance(frame, str) or not FRAME_ID.match(frame)):
        raise Rejected("bad_field", "frame_id")
    return data
