"""A command to a unit, as the console sends it: recorded with who sent it (a person, or a rollout on a person's
behalf), then published through the broker; the unit's reply lands in the same row by its request id."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from console.store import queries
from contract import topics


def send(engine: Engine, publish: Callable[[str, bytes], None], edge_prefix: str, who: str, device_id: str,
         name: str, args: dict[str, Any], review_of: str | None = None) -> str:
    request_id = queries.record_command(engine, who, device_id, name, args, review_of=review_of)
    publish(f"{edge_prefix}/{device_id}/{topics.CMD}/{name}", json.dumps({**args, "request_id": request_id}).encode())
    return request_id
