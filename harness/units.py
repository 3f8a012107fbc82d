"""Simulated units: an MQTT client that says what a unit says (availability, status, results, metrics, alerts with
their snapshot and heatmap), built with the contract's own models, so the console's tests feed it real messages."""

from __future__ import annotations

import itertools
import time
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from contract import payloads, topics

SHA = "5" * 64


def jpeg(seed: int, side: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    return bytes(cv2.imencode(".jpg", image)[1].tobytes())


class SimUnit:
    def __init__(self, client: mqtt.Client, device_id: str, *, prefix: str = topics.DEFAULT_PREFIX,
                 model: str = "sim-model"):
        self.client, self.device_id, self.model = client, device_id, model
        self.base = topics.base(prefix, device_id)
        self._seq = itertools.count(1)
        self.boot = int(time.time())

    def _pub(self, suffix: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(f"{self.base}/{suffix}", payload, qos=qos, retain=retain)

    def online(self, online: bool = True) -> None:
        self._pub(topics.AVAILABLE, topics.ONLINE if online else topics.OFFLINE, retain=True)

    def status(self, camera: str = "streaming", release: dict[str, Any] | None = None,
               variants: list[dict[str, Any]] | None = None) -> None:
        self._pub(topics.STATUS, payloads.dumps(payloads.Status(
            device_id=self.device_id, software_version="sim", started_at=topics.iso(self.boot), uptime_s=1.0,
            mode="continuous", model=payloads.StatusModel(name=self.model, quantization="int8", sha256=SHA,
                                                          variants=variants),
            camera=payloads.CameraState(state=camera), gradcam={"state": "idle"}, release=release)), retain=True)

    def result(self, p_defect: float, *, qos: int = 0, ts: float | None = None) -> str:
        frame_id = f"{self.device_id}-{self.boot}-{next(self._seq):09d}"
        self._pub(topics.RESULT, payloads.dumps(payloads.Result(
            device_id=self.device_id, ts=topics.iso(ts or time.time()), frame_id=frame_id,
            label="defective" if p_defect > 0.5 else "good", defective=p_defect > 0.5, p_defect=p_defect,
            confidence=max(p_defect, 1 - p_defect), threshold=0.5, low_confidence=0.4 <= p_defect <= 0.6,
            model=payloads.ModelRef(name=self.model, quantization="int8", sha256=SHA),
            timings_ms={"preprocess": 0.3, "inference": 3.0, "postprocess": 0.1})), qos=qos)
        return frame_id

    def part(self, verdict: str, *, p_defect: float | None = None, ts: float | None = None,
             sha256: str = SHA) -> payloads.Part:
        """A part's verdict, as a unit in a part mode says it (its deciding frame's result is not sent)."""
        seq = next(self._seq)
        p = {"ok": 0.1, "ng": 0.9, "unsure": 0.5}.get(verdict) if p_defect is None else p_defect
        judged = verdict != "missed" and p is not None
        message = payloads.Part(
            device_id=self.device_id, ts=topics.iso(ts or time.time()), part_id=f"{self.device_id}-{self.boot}-p"
            f"{seq:09d}", seq=seq, trigger="presence", verdict=verdict, aggregate="max", frames=[],
            frame_id=f"{self.device_id}-{self.boot}-{seq:09d}" if judged else None,
            p_defect=p if judged else None, defective=(p > 0.5) if judged and p is not None else None,
            model=payloads.ModelRef(name=self.model, quantization="int8", sha256=sha256),
            timings_ms={"trigger_to_verdict": 12.0}, error=None if judged else "no frame in time")
        self._pub(topics.PART, payloads.dumps(message))
        return message

    def metrics(self, fps: float) -> None:
        self._pub(topics.METRICS, payloads.dumps(payloads.Metrics(
            device_id=self.device_id, interval_s=1.0, fps=fps, frames=int(fps), dropped_frames=0, frame_errors=0,
            latency_ms={"inference": {"p50": 3.0, "p95": 4.0, "p99": 5.0}}, cpu_temp_c=None, load=[0.1],
            rss_mb=80.0, outbox={"depth": 0}, mqtt={"reconnects": 0}, camera={"state": "streaming"},
            alerts_suppressed=0, uptime_s=1.0)), qos=0)

    def alert(self, frame_id: str, p_defect: float = 0.93, *, evidence: bool = True, **extra: str) -> str:
        key = f"{self.device_id}:defect:{frame_id}"
        self._pub(topics.ALERT, payloads.dumps(payloads.Alert(
            device_id=self.device_id, kind="defect", frame_id=frame_id, dedup_key=key, label="defective",
            p_defect=p_defect, confidence=p_defect, threshold=0.5, model=self.model, **extra)))
        if evidence:
            self._pub(f"{topics.SNAPSHOT}/{frame_id}", jpeg(hash(frame_id) % 1000))
            self._pub(f"{topics.GRADCAM}/{frame_id}", jpeg(hash(frame_id) % 1000 + 1))
        return key
