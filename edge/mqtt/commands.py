"""Commands on ``<base>/cmd/<name>``: parsed strictly, answered always, never a crash.

Every command gets a reply on ``cmd/<name>/reply`` (and on the MQTT v5 response topic, with its correlation data,
when the request names one): ``ok`` with a result, or ``ok: false`` with an error naming the problem. Retained
messages on a command topic are ignored without a reply: a command must never re-run because a broker restarted.
Payloads are JSON objects of at most 16 KiB; each command's arguments are validated against its own schema
(unknown keys and wrong JSON types are errors).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.mqtt import topics

log = logging.getLogger(__name__)

MAX_PAYLOAD = 16 * 1024


class CommandError(ValueError):
    """The command cannot be carried out; the message goes back to the sender."""


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    request_id: str | None = Field(default=None, max_length=128)  # echoed in the reply (for MQTT 3.1.1 callers)


class ModelArgs(_Args):
    name: str = Field(min_length=1, max_length=100)


class ThresholdArgs(_Args):
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    low_confidence_band: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _something(self) -> ThresholdArgs:
        if self.threshold is None and self.low_confidence_band is None:
            raise ValueError("give threshold and/or low_confidence_band")
        band = self.low_confidence_band
        if band is not None and not 0.0 <= band[0] <= band[1] <= 1.0:
            raise ValueError("low_confidence_band must be [lo, hi] with 0 <= lo <= hi <= 1")
        return self


class TriggerArgs(_Args):
    pass


class FeedbackArgs(_Args):
    frame_id: str = Field(min_length=1, max_length=128)
    label: Literal["good", "defective"]  # what the part really was
    note: str = Field(default="", max_length=1000)


class GradcamArgs(_Args):
    frame_id: str = Field(min_length=1, max_length=128)
    method: Literal["gradcam", "gradcam++"] = "gradcam"


SCHEMAS: dict[str, type[_Args]] = {"model": ModelArgs, "threshold": ThresholdArgs, "trigger": TriggerArgs,
                                   "feedback": FeedbackArgs, "gradcam": GradcamArgs}


class Handlers(Protocol):
    def cmd_model(self, args: ModelArgs) -> dict[str, Any]: ...
    def cmd_threshold(self, args: ThresholdArgs) -> dict[str, Any]: ...
    def cmd_trigger(self, args: TriggerArgs) -> dict[str, Any]: ...
    def cmd_feedback(self, args: FeedbackArgs) -> dict[str, Any]: ...
    def cmd_gradcam(self, args: GradcamArgs) -> dict[str, Any]: ...


def parse(name: str, payload: bytes | bytearray) -> _Args:
    if name not in SCHEMAS:
        raise CommandError(f"unknown command {name[:40]!r}; known: {', '.join(SCHEMAS)}")
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8") if payload.strip() else "{}"
        data = json.loads(text)
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CommandError(f"payload is not JSON: {e.msg} at position {e.pos}") from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, not {type(data).__name__}")
    try:
        # From the JSON text, not the decoded dict: strict mode then takes JSON arrays for tuples, and still
        # refuses "0.5" for a number or 1 for a boolean.
        return SCHEMAS[name].model_validate_json(text)
    except ValidationError as e:
        raise CommandError("; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'payload'}: "
                                     f"{err['msg'].removeprefix('Value error, ')}"
                                     for err in e.errors())[:500]) from None


class CommandRouter:
    def __init__(self, device_id: str, handlers: Handlers,
                 reply: Callable[[str, bytes, Properties | None], None]):
        self.device_id = device_id
        self.handlers = handlers
        self._reply = reply  # (full topic, payload, v5 properties or None)
        self.counts = {"ok": 0, "error": 0, "ignored_retained": 0}

    def handle(self, name: str, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            self.counts["ignored_retained"] += 1
            log.warning("ignored retained command on %s (commands are never retained)", msg.topic)
            return
        request_id: str | None = None
        try:
            args = parse(name, msg.payload)
            request_id = args.request_id
            result = getattr(self.handlers, f"cmd_{name}")(args)
            body = {"ok": True, "result": result}
            self.counts["ok"] += 1
        except CommandError as e:
            body = {"ok": False, "error": str(e)}
            self.counts["error"] += 1
            log.info("command %s rejected: %s", name[:40], e)
        payload = topics.dumps(topics.envelope(self.device_id, command=name[:40], request_id=request_id, **body))
        # Unknown names share one reply topic, so hostile names cannot make the unit publish on topics they choose.
        topic = msg.topic if name in SCHEMAS else f"{msg.topic.rsplit('/', 1)[0]}/unknown"
        self._reply(f"{topic}/{topics.REPLY}", payload, None)
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic and "#" not in response_topic and "+" not in response_topic:
            out = Properties(PacketTypes.PUBLISH)
            correlation = getattr(props, "CorrelationData", None)
            if correlation is not None:
                out.CorrelationData = correlation
            self._reply(response_topic, payload, out)
