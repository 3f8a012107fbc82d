"""The second channel: a JSON POST with a Slack-compatible ``text`` (Slack, Mattermost, Teams connectors, n8n...)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from relay.mailer import PermanentError, TransientError


def body(text: str, detail: dict[str, Any]) -> bytes:
    return json.dumps({"text": text, "defect_relay": detail}, separators=(",", ":")).encode()


def post(url: str, payload: bytes, timeout: float = 10.0) -> None:
    req = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # URLs come from the config, not devices
            resp.read()
    except urllib.error.HTTPError as e:
        retry = e.code >= 500 or e.code == 429
        raise (TransientError if retry else PermanentError)(f"webhook HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise TransientError(f"webhook unreachable: {getattr(e, 'reason', e)}") from None
