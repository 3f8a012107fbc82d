"""What the unit does when commanded (``cmd/model``, ``threshold``, ``trigger``, ``feedback``, ``gradcam``,
``learn_belt``).

Each handler runs on paho's network thread, returns the reply's ``result`` or raises :class:`CommandError` with a
message for the sender; :mod:`edge.mqtt.commands` parses, routes and answers. A model swap is one reference
assignment under a lock: the next frame uses the new model, and a model that fails to load leaves the old one in place.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from contract import topics
from contract.payloads import (
    CommandError,
    FeedbackArgs,
    GradcamArgs,
    LearnBeltArgs,
    ModelArgs,
    ThresholdArgs,
    TriggerArgs,
)
from edge.errors import USER_ERRORS
from edge.images import encode_jpeg

if TYPE_CHECKING:
    from edge.daemon import Daemon


class Control:
    def __init__(self, daemon: Daemon):
        self.d = daemon

    def _buffered_or_error(self, frame_id: str) -> Any:
        item = self.d.ring.get(frame_id)
        if item is None:
            raise CommandError(f"frame {frame_id[:80]!r} is unknown or no longer buffered "
                               f"(the unit keeps its last {self.d.cfg.state.ring_frames} frames)")
        return item

    def cmd_model(self, args: ModelArgs) -> dict[str, Any]:
        d = self.d
        with d.swap_lock:
            try:
                new = d.load_classifier(args.name)
            except USER_ERRORS as e:
                d.model_refused = f"{args.name}: {e}"
                d.publish_status()
                raise CommandError(f"model {args.name!r} not loaded, keeping {d.classifier.name}: {e}") from None
            old = d.pipeline.classifier
            d.pipeline.classifier = new  # one reference swap: the next frame uses the new model
            d.model_refused = None
        d.history.event("model", old=old.name, new=new.name, sha256=new.manifest.tflite.sha256)
        d.publish_status()
        return {"model": new.name, "quantization": new.manifest.quantization, "sha256": new.manifest.tflite.sha256,
                "previous": old.name}

    def cmd_threshold(self, args: ThresholdArgs) -> dict[str, Any]:
        d = self.d
        with d.swap_lock:
            try:
                d.policy.command(threshold=args.threshold, low_confidence_band=args.low_confidence_band,
                                 reset=args.reset)
            except ValueError as e:
                raise CommandError(f"not set: {e}") from None
            except OSError as e:
                raise CommandError(f"not set: cannot keep it in the state directory: {e}") from None
            clf = d.classifier
            clf.decision = d.policy.decision(clf.manifest.decision)
        d.history.event("threshold", threshold=clf.decision.threshold,
                        low_confidence_band=list(clf.decision.low_confidence_band), reset=args.reset)
        d.publish_status()
        return {"threshold": clf.decision.threshold, "low_confidence_band": list(clf.decision.low_confidence_band),
                "from": {k: v["from"] for k, v in d.policy.sources(clf.manifest.decision).items()}}

    def cmd_trigger(self, args: TriggerArgs) -> dict[str, Any]:
        if self.d.pipeline.mode != "on_demand":
            raise CommandError("this unit classifies continuously; set inference.mode = \"on_demand\" to use trigger")
        asked = time.perf_counter()
        part = self.d.pipeline.trigger("mqtt")
        return {"triggered": True, "part_id": part.part_id, "seq": part.seq, "result_topic": topics.PART,
                # debounced: the part triggered just before, from MQTT too, is this one (docs/line.md)
                "duplicate": part.started < asked}

    def cmd_feedback(self, args: FeedbackArgs) -> dict[str, Any]:
        item = self._buffered_or_error(args.frame_id)
        row = self.d.history.add_feedback(frame_id=item.frame_id, predicted=item.prediction.label,
                                          p_defect=item.prediction.p_defect, true_label=args.label, note=args.note,
                                          model=item.prediction.model,
                                          jpeg=encode_jpeg(item.image, item.frame_order, 95))
        return {"feedback_id": row, "frame_id": item.frame_id, "correct": item.prediction.label == args.label}

    def cmd_gradcam(self, args: GradcamArgs) -> dict[str, Any]:
        gradcam = self.d.gradcam
        if gradcam is None:
            raise CommandError("Grad-CAM is disabled on this unit (gradcam.enabled = false)")
        item = self._buffered_or_error(args.frame_id)
        if not gradcam.request(item.frame_id, item.image, item.frame_order, args.method,
                               {"p_defect_tflite": item.prediction.p_defect, "request_id": args.request_id}):
            raise CommandError("too many Grad-CAM requests waiting; try again shortly")
        return {"queued": True, "frame_id": item.frame_id, "method": args.method,
                "result_topics": [f"{topics.GRADCAM}/{item.frame_id}", topics.GRADCAM]}

    def cmd_learn_belt(self, args: LearnBeltArgs) -> dict[str, Any]:
        presence = self.d.pipeline.parts.presence
        if presence is None:
            raise CommandError("this unit does not use presence (parts.presence = false): there is no belt to learn")
        presence.asked = "asked by cmd/learn_belt"
        return {"learning": True, "frames": presence.s.learn_frames}
