"""What the unit does when commanded (``cmd/model``, ``threshold``, ``trigger``, ``feedback``, ``gradcam``,
``learn_belt``, and a release's ``release``, ``promote``, ``reject``, ``rollback``, which :mod:`edge.rollout`
carries out).

Each handler runs on the MQTT link's thread (``edge/mqtt/client.py``), returns the reply's ``result`` or raises
:class:`CommandError` with a message for the sender; :mod:`edge.mqtt.commands` parses, routes and answers. A model
swap is one reference assignment under a lock: the next frame uses the new model, and a model that fails to load
leaves the old one in place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from contract import topics
from contract.payloads import (
    CommandError,
    FeedbackArgs,
    GradcamArgs,
    LearnBeltArgs,
    ModelArgs,
    PromoteArgs,
    RejectArgs,
    ReleaseArgs,
    RollbackArgs,
    ThresholdArgs,
    TriggerArgs,
)
from core.classifier import Classifier
from core.images import encode_jpeg
from edge.errors import USER_ERRORS
from edge.gradcam.service import GradcamService
from edge.history import History
from edge.pipeline import Pipeline
from edge.policy import DecisionPolicy
from edge.ringbuffer import Buffered, FrameRing
from edge.rollout import Rollout, RolloutError


class Control:
    """The command handlers, given what they act on: the pipeline (its model, triggers and presence), the frames
    still buffered, the history, the decision policy and the Grad-CAM service; ``load`` loads and proves a model,
    ``changed`` republishes the retained status. ``model_refused`` is the last model refused, and why."""

    def __init__(self, pipeline: Pipeline, *, ring: FrameRing, history: History, policy: DecisionPolicy,
                 gradcam: GradcamService | None, load: Callable[[str], Classifier], changed: Callable[[], None],
                 rollout: Rollout):
        self.pipeline, self.ring, self.history, self.policy, self.gradcam = pipeline, ring, history, policy, gradcam
        self.rollout = rollout
        self._load, self._changed = load, changed
        self.swap_lock = threading.Lock()  # one model or decision change at a time
        self.model_refused: str | None = None

    def _buffered_or_error(self, frame_id: str) -> Buffered:
        item = self.ring.get(frame_id)
        if item is None:
            raise CommandError(f"frame {frame_id[:80]!r} is unknown or no longer buffered "
                               f"(the unit keeps its last {self.ring.max_frames} frames)")
        return item

    def _swap(self, new: Classifier) -> Classifier:
        """One reference swap, under ``swap_lock`` (held by the caller): the next frame uses the new model."""
        old = self.pipeline.classifier
        self.pipeline.classifier = new
        self.history.event("model", old=old.name, new=new.name, sha256=new.manifest.tflite.sha256)
        return old

    def swap(self, new: Classifier) -> Classifier:
        """A promotion's or a rollback's swap (edge.rollout), as ``cmd/model`` makes its own; returns the old."""
        with self.swap_lock:
            return self._swap(new)

    def cmd_model(self, args: ModelArgs) -> dict[str, Any]:
        with self.swap_lock:
            old = self.pipeline.classifier
            try:
                new = self._load(args.name)
            except USER_ERRORS as e:
                self.model_refused = f"{args.name}: {e}"
                self._changed()
                raise CommandError(f"model {args.name!r} not loaded, keeping {old.name}: {e}") from None
            self._swap(new)
            self.model_refused = None
        self._changed()
        return {"model": new.name, "quantization": new.manifest.quantization, "sha256": new.manifest.tflite.sha256,
                "previous": old.name}

    def cmd_threshold(self, args: ThresholdArgs) -> dict[str, Any]:
        with self.swap_lock:
            try:
                self.policy.command(threshold=args.threshold, low_confidence_band=args.low_confidence_band,
                                    reset=args.reset)
            except ValueError as e:
                raise CommandError(f"not set: {e}") from None
            except OSError as e:
                raise CommandError(f"not set: cannot keep it in the state directory: {e}") from None
            clf = self.pipeline.classifier
            clf.decision = self.policy.decision(clf.manifest.decision)
        self.history.event("threshold", threshold=clf.decision.threshold,
                           low_confidence_band=list(clf.decision.low_confidence_band), reset=args.reset)
        self._changed()
        return {"threshold": clf.decision.threshold, "low_confidence_band": list(clf.decision.low_confidence_band),
                "from": {k: v["from"] for k, v in self.policy.sources(clf.manifest.decision).items()}}

    def cmd_trigger(self, args: TriggerArgs) -> dict[str, Any]:
        if self.pipeline.mode != "on_demand":
            raise CommandError("this unit classifies continuously; set inference.mode = \"on_demand\" to use trigger")
        asked = time.perf_counter()
        part = self.pipeline.trigger("mqtt")
        return {"triggered": True, "part_id": part.part_id, "seq": part.seq, "result_topic": topics.PART,
                # debounced: the part triggered just before, from MQTT too, is this one (docs/line.md)
                "duplicate": part.started < asked}

    def cmd_feedback(self, args: FeedbackArgs) -> dict[str, Any]:
        item = self._buffered_or_error(args.frame_id)
        row = self.history.add_feedback(frame_id=item.frame_id, predicted=item.prediction.label,
                                          p_defect=item.prediction.p_defect, true_label=args.label, note=args.note,
                                          model=item.prediction.model,
                                          jpeg=encode_jpeg(item.image, item.frame_order, 95))
        return {"feedback_id": row, "frame_id": item.frame_id, "correct": item.prediction.label == args.label}

    def cmd_gradcam(self, args: GradcamArgs) -> dict[str, Any]:
        gradcam = self.gradcam
        if gradcam is None:
            raise CommandError("Grad-CAM is disabled on this unit (gradcam.enabled = false)")
        item = self._buffered_or_error(args.frame_id)
        if not gradcam.request(item.frame_id, item.image, item.frame_order, args.method,
                               {"p_defect_tflite": item.prediction.p_defect, "request_id": args.request_id}):
            raise CommandError("too many Grad-CAM requests waiting; try again shortly")
        return {"queued": True, "frame_id": item.frame_id, "method": args.method,
                "result_topics": [f"{topics.GRADCAM}/{item.frame_id}", topics.GRADCAM]}

    def cmd_learn_belt(self, args: LearnBeltArgs) -> dict[str, Any]:
        presence = self.pipeline.parts.presence
        if presence is None:
            raise CommandError("this unit does not use presence (parts.presence = false): there is no belt to learn")
        presence.asked = "asked by cmd/learn_belt"
        return {"learning": True, "frames": presence.s.learn_frames}

    def _rollout(self, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return step()
        except RolloutError as e:
            raise CommandError(str(e)) from None

    def cmd_release(self, args: ReleaseArgs) -> dict[str, Any]:
        return self._rollout(lambda: self.rollout.offer(args.name, args.version))

    def cmd_promote(self, args: PromoteArgs) -> dict[str, Any]:
        return self._rollout(self.rollout.promote)

    def cmd_reject(self, args: RejectArgs) -> dict[str, Any]:
        return self._rollout(self.rollout.reject)

    def cmd_rollback(self, args: RollbackArgs) -> dict[str, Any]:
        return self._rollout(self.rollout.rollback)
