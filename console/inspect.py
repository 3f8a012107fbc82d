"""The inspect page's work: the original app's "upload a photo, pick a model, read the call and its heatmap".

The call is the unit's own: the same manifest, decoding (:func:`core.images.decode_rgb`), preprocessing and
classifier (:class:`core.classifier.Classifier`, LiteRT), imported, not re-written, so for the same file and model the
console's p_defect is ``defect-edge classify``'s. Heatmaps come from the unit's Grad-CAM worker (a process with
TensorFlow, started on the first request, stopped when idle), so the console itself never imports TensorFlow.

Uploads are checked before anything decodes them: at most ``web.max_upload_mb`` per request, a JPEG or PNG signature,
and at most :data:`MAX_PIXELS` pixels as the header declares them (a decompression bomb is a few KB that decode to
gigabytes).
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.framing import lone_crop
from core.images import ImageError, decode_rgb

MAX_PIXELS = 40_000_000  # a 40 MP photo; more is not a camera frame
KEEP_UPLOADS = 64  # frames kept for their heatmaps


class InspectError(ValueError):
    """An upload or a model that cannot be inspected; the message is shown to the user."""


def declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's or PNG's header, before any decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InspectError("a PNG without its header")
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                raise InspectError("a damaged JPEG (no marker where one belongs)")
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return int(w), int(h)
            i += 2 + length
        raise InspectError("a JPEG without a frame header (truncated?)")
    raise InspectError("not a JPEG or PNG file")


def decode_upload(name: str, data: bytes) -> np.ndarray:
    """An uploaded file as an RGB frame, or :class:`InspectError` saying what is wrong with it."""
    if not data:
        raise InspectError("an empty file")
    w, h = declared_size(data)
    if w * h > MAX_PIXELS or w == 0 or h == 0:
        raise InspectError(f"declares {w}x{h} pixels; at most {MAX_PIXELS // 1_000_000} megapixels are inspected "
                           "(a decompression bomb?)")
    try:
        return decode_rgb(data, name)
    except ImageError as e:
        raise InspectError(str(e).removeprefix(f"{name}: ")) from None


@dataclass
class Call:
    """One file's call, as the page and the CSV show it."""

    id: str
    name: str
    model: str
    ok: bool
    error: str = ""
    label: str = ""
    p_defect: float = 0.0
    confidence: float = 0.0
    low_confidence: bool = False
    threshold: float = 0.5
    width: int = 0
    height: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    crop: tuple[int, int, int, int] | None = None  # located: the part's square in the upload, as the unit crops it
    ood: float | None = None  # distance from the model's training inputs (a model with a signature)
    unfamiliar: bool = False  # ood above the model's threshold


class Inspector:
    """The console's model store (``models_dir``), a classifier per model (made on first use), and the last uploads
    kept for their heatmaps."""

    def __init__(self, models_dir: Path | None, *, threads: int = 1):
        self.models_dir = models_dir
        self.threads = threads
        self._classifiers: dict[str, Any] = {}
        self._gradcam: dict[str, Any] = {}
        self._heatmaps: dict[str, tuple[str, bytes | str]] = {}  # upload id -> (method, JPEG or error)
        self._uploads: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self.calls: OrderedDict[str, Call] = OrderedDict()  # the last calls, for the CSV
        self._lock = threading.Lock()

    def models(self) -> list[dict[str, Any]]:
        """Every model in the store, with what a person picks it by: quantization and parity figures."""
        if self.models_dir is None:
            return []
        from core import manifest as mf
        from core.models import list_models

        out: list[dict[str, Any]] = []
        for name in list_models(self.models_dir):
            try:
                m = mf.load(self.models_dir / f"{name}.json")
            except mf.ManifestError as e:
                out.append({"name": name, "error": str(e)})
                continue
            p = m.parity
            out.append({"name": name, "quantization": m.quantization, "architecture": m.architecture,
                        "agreement": p.get("agreement"), "max_abs_dp": p.get("max_abs_dp"), "n": p.get("n"),
                        "heatmaps": mf.resolve(self.models_dir / f"{name}.json", m.source).is_file()})
        return out

    def classifier(self, name: str) -> Any:
        if self.models_dir is None:
            raise InspectError("no model store: set models_dir in console.toml")
        from core.classifier import Classifier
        from core.models import manifest_path
        from edge.errors import USER_ERRORS

        with self._lock:
            if name not in self._classifiers:
                try:
                    self._classifiers[name] = Classifier(manifest_path(self.models_dir, name),
                                                         num_threads=self.threads)
                except USER_ERRORS as e:
                    raise InspectError(str(e)) from None
            return self._classifiers[name]

    def inspect(self, name: str, data: bytes, model: str, *, locate: bool = False) -> Call:
        """One upload's call; ``locate``: a whole frame from the line's camera, so find the part and crop it as the
        unit does at the line (core/framing.py) before classifying."""
        call = Call(id=secrets.token_hex(8), name=name[:200], model=model, ok=False)
        with self._lock:
            self.calls[call.id] = call
            while len(self.calls) > 10 * KEEP_UPLOADS:
                self.calls.popitem(last=False)
        t0 = time.perf_counter()
        try:
            frame = decode_upload(name, data)
            decode_ms = (time.perf_counter() - t0) * 1e3
            clf = self.classifier(model)
            box = lone_crop(frame, clf.manifest.framing) if locate else None
            p = clf.classify(frame, box=box)
        except InspectError as e:
            call.error = str(e)
            return call
        if box is not None:
            call.crop = (box.x, box.y, box.width, box.height)
            frame = frame[box.y:box.y + box.height, box.x:box.x + box.width]  # the heatmap of what the model saw
        if p.ood is not None and clf.ood_threshold is not None:
            call.ood, call.unfamiliar = round(p.ood, 3), p.ood > clf.ood_threshold
        call.ok, call.label, call.p_defect, call.confidence = True, p.label, p.p_defect, p.confidence
        call.low_confidence, call.threshold = p.low_confidence, p.threshold
        call.height, call.width = frame.shape[:2]
        call.timings_ms = {"decode": round(decode_ms, 3), **{k: round(v, 3) for k, v in p.timings_ms.items()}}
        with self._lock:
            self._uploads[call.id] = (model, frame)
            while len(self._uploads) > KEEP_UPLOADS:
                self._uploads.popitem(last=False)
        return call

    # -- heatmaps ------------------------------------------------------------------------------------------------
    def request_heatmap(self, upload_id: str, method: str) -> str:
        """Queue a heatmap of an upload; "queued", or why not."""
        with self._lock:
            found = self._uploads.get(upload_id)
        if found is None:
            return "this upload is no longer kept; upload it again"
        return self.heatmap_of(upload_id, found[0], found[1], method)

    def heatmap_of(self, key: str, model: str, frame: np.ndarray, method: str) -> str:
        """Queue a heatmap of ``frame`` under ``key`` (an upload, or a stored frame); "queued", or why not."""
        if self.models_dir is None:
            return "no heatmap: the console has no model store (models_dir)"
        from core import manifest as mf
        from core.models import list_models

        if model not in list_models(self.models_dir):
            return f"no heatmap here: model {model!r} is not in the console's model store"
        path = self.models_dir / f"{model}.json"
        if not mf.resolve(path, mf.load(path).source).is_file():
            return f"no heatmap: the Keras model of {model} (its .h5) is not in the model store"
        service = self._service(model, path)
        with self._lock:
            self._heatmaps.pop(key, None)
        if not service.request(key, frame, "RGB", method, {"p_defect_tflite": 0.0}):
            return "too many heatmaps waiting; try again shortly"
        return "queued"

    def heatmap(self, upload_id: str) -> tuple[str, bytes | str] | None:
        """(method, JPEG) when ready, (method, error text) when it failed, None while it is being made."""
        with self._lock:
            return self._heatmaps.get(upload_id)

    def _service(self, model: str, path: Path) -> Any:
        from edge.gradcam.service import GradcamService, Outcome

        def done(o: Outcome) -> None:
            with self._lock:
                self._heatmaps[o.frame_id] = (o.method, o.jpeg if o.ok else o.error)

        with self._lock:
            if model not in self._gradcam:
                self._gradcam[model] = GradcamService(lambda: path, done, threads=self.threads, idle_timeout_s=300)
            return self._gradcam[model]

    def stop(self) -> None:
        for service in self._gradcam.values():
            service.stop()
