"""Every MQTT topic name and payload envelope of the product (DESIGN §5), in one place.

No dependencies beyond the standard library: the relay imports this module too, so edge and relay cannot disagree
about where a message lives or what its envelope holds.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

SCHEMA = 1
DEFAULT_PREFIX = "defect-edge"

AVAILABLE = "available"
STATUS = "status"
RESULT = "result"
ALERT = "alert"
METRICS = "metrics"
SNAPSHOT = "snapshot"  # snapshot/<frame_id>: JPEG bytes
GRADCAM = "gradcam"  # gradcam/<frame_id>: JPEG bytes; "gradcam" alone: the JSON event
CMD = "cmd"  # cmd/<name>; replies on cmd/<name>/reply
REPLY = "reply"

COMMANDS = ("gradcam", "model", "threshold", "feedback", "trigger")
ALERT_KINDS = ("defect", "low_confidence", "camera_offline", "model_error")

ONLINE, OFFLINE = b"online", b"offline"

# A device id is one topic level: no wildcards, no separators, bounded, and safe in an e-mail header.
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A prefix is one or more such levels.
PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def base(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}"


def command_name(base_topic: str, full_topic: str) -> str | None:
    """``model`` for ``<base>/cmd/model``; None for anything else (replies included)."""
    head = f"{base_topic}/{CMD}/"
    if not full_topic.startswith(head):
        return None
    name = full_topic[len(head):]
    return name if name and "/" not in name else None


def utc_now() -> str:
    """UTC ISO-8601 with millisecond precision and a ``Z``, as every payload's ``ts``."""
    return iso(datetime.now(timezone.utc).timestamp())


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def envelope(device_id: str, ts: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "device_id": device_id, "ts": ts or utc_now(), **fields}


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
