"""Commands on ``<base>/cmd/<name>``: parsed strictly, answered always, never a crash.

Every command gets a reply on ``cmd/<name>/reply`` (unknown names share ``cmd/unknown/reply``, so a hostile name
cannot choose the topic): ``ok`` with a result, or ``ok: false`` with an error naming the problem, whatever the
payload, and whatever a handler raises. Retained messages on a command topic are ignored without a reply: a command
must never re-run because a broker restarted. The arguments' schemas live in the contract
(:mod:`contract.payloads`), where the console builds its commands with the same code.

An MQTT v5 response topic is honoured only where a reply belongs (``docs/mqtt.md``, "Commands"): anywhere outside
the units' prefix (the broker's ACL decides who may listen there), or the unit's own ``cmd/<name>/reply``. A
response topic under the prefix that is anything else (a unit's ``alert`` or ``result``, another unit's reply) would
let anyone allowed to command a unit inject messages into the dashboards' feeds: such a command is refused, and the
refusal goes to ``cmd/<name>/reply``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import payloads, topics
from contract.payloads import (
    CommandError,
    FeedbackArgs,
    GradcamArgs,
    LearnBeltArgs,
    ModelArgs,
    PromoteArgs,
    RejectArgs,
    ReleaseArgs,
    Reply,
    RollbackArgs,
    ThresholdArgs,
    TriggerArgs,
)

log = logging.getLogger(__name__)

__all__ = ["CommandError", "CommandRouter", "Handlers", "response_topic_problem"]

MAX_RESPONSE_TOPIC = 256


class Handlers(Protocol):
    def cmd_model(self, args: ModelArgs) -> dict[str, Any]: ...
    def cmd_threshold(self, args: ThresholdArgs) -> dict[str, Any]: ...
    def cmd_trigger(self, args: TriggerArgs) -> dict[str, Any]: ...
    def cmd_feedback(self, args: FeedbackArgs) -> dict[str, Any]: ...
    def cmd_gradcam(self, args: GradcamArgs) -> dict[str, Any]: ...
    def cmd_learn_belt(self, args: LearnBeltArgs) -> dict[str, Any]: ...
    def cmd_release(self, args: ReleaseArgs) -> dict[str, Any]: ...
    def cmd_promote(self, args: PromoteArgs) -> dict[str, Any]: ...
    def cmd_reject(self, args: RejectArgs) -> dict[str, Any]: ...
    def cmd_rollback(self, args: RollbackArgs) -> dict[str, Any]: ...


def response_topic_problem(prefix: str, own_reply: str, topic: str) -> str | None:
    """Why a v5 response topic may not be used, or None when it may."""
    if len(topic) > MAX_RESPONSE_TOPIC or "\x00" in topic:
        return "response topic is too long or not text"
    if "#" in topic or "+" in topic or topic.startswith("$"):
        return "response topic may not hold wildcards or start with '$'"
    if (topic == prefix or topic.startswith(prefix + "/")) and topic != own_reply:
        return f"response topic {topic[:120]!r} is under the units' prefix; replies go to {own_reply} there"
    return None


class CommandRouter:
    def __init__(self, prefix: str, device_id: str, handlers: Handlers,
                 reply: Callable[[str, bytes, Properties | None], None]):
        self.prefix = prefix
        self.base = topics.base(prefix, device_id)
        self.device_id = device_id
        self.handlers = handlers
        self._reply = reply  # (full topic, payload, v5 properties or None)
        self.counts = {"ok": 0, "error": 0, "ignored_retained": 0}

    def _run(self, name: str, msg: mqtt.MQTTMessage) -> Reply:
        request_id: str | None = None
        try:
            args = payloads.parse_command(name, msg.payload)
            request_id = args.request_id
            result = getattr(self.handlers, f"cmd_{name}")(args)
            return Reply(device_id=self.device_id, command=name[:40], request_id=request_id, ok=True, result=result)
        except CommandError as e:
            log.info("command %s rejected: %s", name[:40], e)
            return Reply(device_id=self.device_id, command=name[:40], request_id=request_id, ok=False,
                         error=str(e)[:500])
        except Exception as e:  # a handler's bug: said in the reply and the journal, never lost on paho's thread
            log.exception("command %s failed", name[:40])
            return Reply(device_id=self.device_id, command=name[:40], request_id=request_id, ok=False,
                         error=f"internal error: {type(e).__name__}: {str(e)[:300]}")

    def handle(self, name: str, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            self.counts["ignored_retained"] += 1
            log.warning("ignored retained command on %s (commands are never retained)", msg.topic)
            return
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        own = topics.reply_topic(self.base, name)
        refused = response_topic_problem(self.prefix, own, response_topic) if response_topic else None
        if refused:
            log.warning("command %s refused: %s", name[:40], refused)
            reply = Reply(device_id=self.device_id, command=name[:40], request_id=None, ok=False,
                          error=f"refused: {refused}")
        else:
            reply = self._run(name, msg)
        self.counts["ok" if reply.ok else "error"] += 1
        payload = payloads.dumps(reply)
        self._reply(own, payload, None)
        if response_topic and not refused:
            out = Properties(PacketTypes.PUBLISH)
            correlation = getattr(props, "CorrelationData", None)
            if correlation is not None:
                out.CorrelationData = correlation
            self._reply(response_topic, payload, out)
