"""The contract layer on its own: every message built and read back, hostile payloads and topics refused with the
right reason, and the command parser and router fuzzed: whatever bytes arrive, one reply, never an exception."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contract import payloads, topics
from contract.payloads import CommandError, PayloadError
from edge.mqtt.commands import CommandRouter, response_topic_problem

SHA = "ab" * 32
MODEL = payloads.ModelRef(name="mobilenetv2", quantization="int8", sha256=SHA)


def examples() -> list[payloads.Message]:
    """One of each message, as a unit builds it."""
    return [
        payloads.Result(device_id="u1", frame_id="u1-1-000000001", label="defective", defective=True, p_defect=0.9,
                        confidence=0.9, threshold=0.5, low_confidence=False, model=MODEL,
                        timings_ms={"inference": 3.1}),
        payloads.Alert(device_id="u1", kind="defect", frame_id="u1-1-000000001", dedup_key="u1:defect:u1-1-1",
                       label="defective", p_defect=0.9, confidence=0.9, threshold=0.5, model="mobilenetv2"),
        payloads.Alert(device_id="u1", kind="camera_offline", frame_id=None, dedup_key="u1:camera_offline:17",
                       since="2026-11-28T03:00:00.000Z", error="stalled"),
        payloads.Status(device_id="u1", software_version="0.1.0", started_at="2026-11-28T03:00:00.000Z",
                        uptime_s=1.0, mode="continuous",
                        model=payloads.StatusModel(**MODEL.model_dump(), threshold=0.5,
                                                   low_confidence_band=(0.4, 0.6)),
                        camera=payloads.CameraState(state="streaming"), gradcam={"state": "idle"}),
        payloads.Metrics(device_id="u1", interval_s=10, fps=25.0, frames=250, dropped_frames=0, frame_errors=0,
                         latency_ms={"inference": {"p50": 3.0, "p95": 4.0, "p99": 5.0}}, cpu_temp_c=None,
                         load=[0.5], rss_mb=80.0, outbox={"depth": 0}, mqtt={"reconnects": 0}, camera={},
                         alerts_suppressed=0, uptime_s=10.0),
        payloads.GradcamEvent(device_id="u1", frame_id="u1-1-000000001", method="gradcam", ok=True, layer="Conv_1",
                              model="mobilenetv2", p_defect_keras=0.9, p_defect_tflite=0.89, timings_ms={},
                              request_id=None, auto="defect"),
        payloads.Reply(device_id="u1", command="threshold", request_id="r1", ok=False, error="no"),
    ]


@pytest.mark.parametrize("message", examples(), ids=lambda m: type(m).__name__)
def test_every_message_reads_back_as_built(message: payloads.Message) -> None:
    wire = payloads.dumps(message)
    data = json.loads(wire)
    assert list(data)[:3] == ["schema", "device_id", "ts"] and data["schema"] == 1 and data["ts"].endswith("Z")
    assert not [k for k in message.omit_if_none if k in data and data[k] is None], "absent, not null"
    again = payloads.read(type(message), wire, device_id="u1")
    assert payloads.dumps(again) == wire


def test_readers_keep_fields_a_newer_unit_adds() -> None:
    wire = json.loads(payloads.dumps(examples()[1]))
    back = payloads.read(payloads.Alert, json.dumps({**wire, "part_id": "p-7"}).encode(), device_id="u1")
    assert json.loads(payloads.dumps(back))["part_id"] == "p-7"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"x" * 70_000, "oversize"),
    (b"\xff\xfe not json", "not_json"),
    (b"[" * 70_000, "oversize"),
    (b"[" * 20_000, "not_json"),  # nested deeper than the JSON parser recurses
    (b"[1, 2]", "not_json"),
    (b'{"schema": 1, "device_id": "u2", "kind": "defect", "frame_id": null, "dedup_key": "k"}', "device_mismatch"),
    (b'{"schema": 1, "device_id": "u1", "ts": "yesterday", "kind": "defect", "frame_id": null, "dedup_key": "k"}',
     "bad_field"),
    (b'{"schema": 1, "device_id": "u1", "kind": "defect\\r\\nBcc: x", "frame_id": null, "dedup_key": "k"}',
     "bad_field"),
    (b'{"schema": 1, "device_id": "u1", "kind": "defect", "frame_id": "../../etc", "dedup_key": "k"}',
     "bad_field"),
    (b'{"schema": 1, "device_id": "u1", "kind": "defect", "frame_id": null, "dedup_key": "k", "p_defect": 7}',
     "bad_field"),
])
def test_hostile_payloads_are_refused_with_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as e:
        payloads.read(payloads.Alert, payload, device_id="u1")
    assert e.value.reason == reason


@pytest.mark.parametrize(("topic", "what", "key"), [
    ("p/l/u1/available", "available", None), ("p/l/u1/result", "result", None),
    ("p/l/u1/snapshot/u1-1-000000002", "snapshot", "u1-1-000000002"), ("p/l/u1/gradcam", "gradcam", None),
    ("p/l/u1/gradcam/u1-1-000000002", "gradcam_image", "u1-1-000000002"),
    ("p/l/u1/cmd/threshold/reply", "reply", "threshold"), ("p/l/u1/cmd/unknown/reply", "reply", "unknown"),
])
def test_topics_split_into_what_and_whose(topic: str, what: str, key: str | None) -> None:
    assert topics.parse("p/l", topic) == topics.Topic(what, "u1", key)


@pytest.mark.parametrize(("topic", "reason"), [
    ("other/u1/result", "bad_topic"), ("p/l/u 1/result", "bad_device_id"), ("p/l/u1/snapshot/../x", "bad_topic"),
    ("p/l/u1/snapshot/a b", "bad_frame_id"), ("p/l/u1/cmd/model", "bad_topic"), ("p/l/u1/result/extra", "bad_topic"),
    ("p/l/" + "u" * 65 + "/result", "bad_device_id"),
])
def test_topics_outside_the_contract_are_refused(topic: str, reason: str) -> None:
    with pytest.raises(topics.TopicError) as e:
        topics.parse("p/l", topic)
    assert e.value.reason == reason


def test_every_command_the_contract_names_has_a_schema_and_a_handler() -> None:
    """The names are written once (contract/topics.py); the schemas, the unit's handler interface and its handlers
    are each checked against them, so a command added in one place and not the others fails here."""
    from edge.control import Control
    from edge.mqtt.commands import Handlers as UnitHandlers

    assert set(topics.COMMANDS) == set(payloads.COMMAND_ARGS)
    for name in topics.COMMANDS:
        assert hasattr(UnitHandlers, f"cmd_{name}") and hasattr(Control, f"cmd_{name}"), name
    assert {n.removeprefix("cmd_") for n in vars(Control) if n.startswith("cmd_")} == set(topics.COMMANDS)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                       max_size=4), max_leaves=20)
names = st.sampled_from([*topics.COMMANDS, "unknown", "x" * 60])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, payload=st.binary(max_size=400))
def test_command_parser_is_total_on_bytes(name: str, payload: bytes) -> None:
    try:
        payloads.parse_command(name, payload)
    except CommandError as e:
        assert str(e) and len(str(e)) <= 500


@settings(max_examples=300, deadline=None)
@given(name=names, value=json_values)
def test_command_parser_is_total_on_json(name: str, value: Any) -> None:
    try:
        payloads.parse_command(name, json.dumps(value).encode())
    except CommandError as e:
        assert str(e)


@pytest.mark.parametrize("payload", [
    b'{"threshold": ' + b"1" * 5000 + b"}",  # an integer beyond Python's digit limit
    b"[" * 8000 + b"]" * 8000,  # nesting beyond the parser's recursion
    b'{"threshold": 1e999}', b'{"threshold": NaN}', b'{"threshold": -Infinity}',
    b'{"low_confidence_band": [0.2, 0.1]}', b'{"low_confidence_band": [0.1, 0.2, 0.3]}',
    b'{"threshold": 0.5, "threshold": "x"}', b"\xef\xbb\xbf{}", b'{"request_id": "' + b"r" * 200 + b'"}',
])
def test_pathological_commands_are_errors_not_exceptions(payload: bytes) -> None:
    with pytest.raises(CommandError):
        payloads.parse_command("threshold", payload)


class Handlers:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def cmd_model(self, args: payloads.ModelArgs) -> dict[str, Any]:
        raise RuntimeError("a bug in a handler")

    def cmd_threshold(self, args: payloads.ThresholdArgs) -> dict[str, Any]:
        self.calls.append("threshold")
        return {"threshold": args.threshold}

    def cmd_trigger(self, args: payloads.TriggerArgs) -> dict[str, Any]:
        return {}

    def cmd_feedback(self, args: payloads.FeedbackArgs) -> dict[str, Any]:
        return {}

    def cmd_gradcam(self, args: payloads.GradcamArgs) -> dict[str, Any]:
        return {}


def route(name: str, payload: bytes, *, response_topic: str | None = None, retain: bool = False
          ) -> tuple[list[tuple[str, dict[str, Any]]], Handlers]:
    sent: list[tuple[str, dict[str, Any]]] = []
    handlers = Handlers()
    router = CommandRouter("acme/line3", "u1", handlers, lambda t, p, _props: sent.append((t, json.loads(p))))
    msg = mqtt.MQTTMessage(topic=f"acme/line3/u1/cmd/{name}".encode())
    msg.payload, msg.retain = payload, retain
    if response_topic is not None:
        msg.properties = Properties(PacketTypes.PUBLISH)
        msg.properties.ResponseTopic = response_topic
    router.handle(name, msg)
    return sent, handlers


@settings(max_examples=200, deadline=None)
@given(name=names, payload=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_every_command_gets_exactly_one_reply_on_its_own_topic(name: str, payload: bytes) -> None:
    sent, _ = route(name, payload)
    assert len(sent) == 1
    topic, body = sent[0]
    assert topic == f"acme/line3/u1/cmd/{name if name in topics.COMMANDS else 'unknown'}/reply"
    assert body["device_id"] == "u1" and isinstance(body["ok"], bool) and (body["ok"] or body["error"])


def test_a_handler_bug_is_answered_not_lost() -> None:
    sent, _ = route("model", b'{"name": "x"}')
    assert sent[0][1]["ok"] is False and sent[0][1]["error"] == "internal error: RuntimeError: a bug in a handler"


def test_retained_commands_are_ignored() -> None:
    sent, handlers = route("threshold", b'{"threshold": 0.1}', retain=True)
    assert sent == [] and handlers.calls == []


@pytest.mark.parametrize("topic", ["acme/line3/u1/alert", "acme/line3/u1/result", "acme/line3/u2/cmd/threshold/reply",
                                   "acme/line3/u1/status", "acme/line3", "$SYS/x", "dash/+/r", "dash/#"])
def test_a_response_topic_where_no_reply_belongs_is_refused(topic: str) -> None:
    sent, handlers = route("threshold", b'{"threshold": 0.1}', response_topic=topic)
    assert handlers.calls == [], "a refused command is not carried out"
    assert [t for t, _ in sent] == ["acme/line3/u1/cmd/threshold/reply"]
    assert sent[0][1]["error"].startswith("refused: ")


@pytest.mark.parametrize("topic", ["dashboards/replies/42", "acme/line3/u1/cmd/threshold/reply"])
def test_a_response_topic_where_replies_belong_is_honoured(topic: str) -> None:
    sent, handlers = route("threshold", b'{"threshold": 0.1}', response_topic=topic)
    assert handlers.calls == ["threshold"]
    assert [t for t, _ in sent] == ["acme/line3/u1/cmd/threshold/reply", topic]
    assert response_topic_problem("acme/line3", "acme/line3/u1/cmd/threshold/reply", topic) is None


def test_timestamps_are_utc_milliseconds_truncated_and_read_back() -> None:
    """Every payload's ``ts``: UTC, three decimals truncated (a frame captured at .9996 s is not stamped a second
    later), a ``Z``; :func:`topics.epoch` reads it back, and refuses anything else in one line."""
    assert topics.iso(0) == "1970-01-01T00:00:00.000Z"
    assert topics.iso(1764990000.9996) == "2025-12-06T03:00:00.999Z"
    assert topics.iso(1764990000.0005) == "2025-12-06T03:00:00.000Z"
    assert topics.epoch(topics.iso(1764990000.1234)) == pytest.approx(1764990000.123, abs=1e-6)
    # The second's text is kept between calls: every stamp is still datetime's, in any order, at the edges of a
    # second and of a microsecond (rounded half to even, as datetime rounds a timestamp: .9999995 is the next second).
    rng = random.Random(7)
    stamps = [1764990000.9999995, 1764990000.9999994, 1764990001.0000005, 59.9999995, 4102444799.9995]
    stamps += [rng.uniform(0, 4.1e9) for _ in range(3000)] + [1764990000 + i / 7 for i in range(3000)]
    for t in stamps:
        assert topics.iso(t) == datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"
    with pytest.raises(ValueError, match="is not UTC ISO-8601 ending in Z"):
        topics.epoch("2025-12-06T03:00:00.000+01:00")
