"""What the relay accepts from the fleet, checked before anything is stored or used in a mail header.

Topics are split by :func:`contract.topics.parse` and alerts read by :func:`contract.payloads.read`: device ids,
kinds, frame ids and dedup keys match strict patterns (no CR/LF, bounded length), the device in the payload must be
the one in the topic, and payloads over the size limits are refused. A refused message is counted by reason and
acknowledged (retrying it would not make it valid); it never becomes a mail.
"""

from __future__ import annotations

from contract import payloads, topics
from contract.payloads import PayloadError
from contract.topics import Topic, TopicError

__all__ = ["Rejected", "parse_alert", "parse_reviewed", "route_topic"]

Rejected = (PayloadError, TopicError)  # both carry ``reason``, the counter a refusal is reported under

_RELAYED = ("alert", topics.SNAPSHOT, topics.FRAME, "gradcam_image")


def route_topic(edge_prefix: str, topic: str) -> Topic:
    """``<prefix>/<device>/alert`` or ``<prefix>/<device>/{snapshot,frame,gradcam}/<frame_id>``; TopicError
    otherwise."""
    where = topics.parse(edge_prefix, topic)
    if where.what not in _RELAYED:
        raise TopicError("bad_topic", topic[:120])
    return where


def parse_alert(device_id: str, payload: bytes, max_bytes: int) -> payloads.Alert:
    return payloads.read(payloads.Alert, payload, device_id=device_id, max_bytes=max_bytes)


def check_image(where: Topic, payload: bytes, max_bytes: int) -> None:
    if len(payload) > max_bytes:
        raise PayloadError("oversize", f"{where.what} of {len(payload)} bytes > {max_bytes}")
    if payload[:2] != b"\xff\xd8":
        raise PayloadError("not_jpeg", f"{where.what} for {where.key} is not a JPEG")


def parse_reviewed(console_prefix: str, topic: str, payload: bytes) -> payloads.Reviewed:
    """``<console_prefix>/<console id>/reviewed``: a person's verdict, which ends an alert's escalation."""
    console_id, sep, what = topic[len(console_prefix) + 1:].partition("/")
    if not sep or what != topics.REVIEWED or not topics.DEVICE_ID.match(console_id):
        raise TopicError("bad_topic", topic[:120])
    return payloads.read(payloads.Reviewed, payload, device_id=console_id, max_bytes=4096)
