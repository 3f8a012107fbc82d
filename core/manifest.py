"""The model manifest (``models/NAME.json`` beside ``models/NAME.tflite``): the one place its schema lives.

The converter writes it; the edge refuses to load a model without a valid one. It tells the edge everything the
``.tflite`` itself does not: how pixels become the input tensor, which output index means *defective*, the decision
threshold, where the Keras model for Grad-CAM is, and the parity figures that justify trusting this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.payloads import Band, CamMethod, Probability

SCHEMA_VERSION = 1

Quantization = Literal["float32", "float16", "dynamic", "int8", "mixed"]  # mixed: int8 with float layers
PixelScaling = Literal["unit", "symmetric", "raw"]
TensorDType = Literal["float32", "uint8", "int8"]


class ManifestError(Exception):
    """A manifest is missing, malformed or does not match its model. The message is one line saying which."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """How a frame becomes the input tensor (see :mod:`core.preprocess`)."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3] = 3  # 1: the model takes one grey channel; the frame is converted once, after the resize
    dtype: TensorDType
    scale: float = 0.0  # quantization scale of the input tensor; 0 for float inputs
    zero_point: int = 0
    color_order: Literal["RGB", "BGR"] = "RGB"
    resize: Literal["bilinear", "area", "nearest"] = "bilinear"
    pixel_scaling: PixelScaling = "unit"


class OutputSpec(_Frozen):
    kind: Literal["sigmoid", "softmax2"] = "sigmoid"
    defect_index: int = Field(default=0, ge=0, le=1)  # for softmax2: which column is P(defective)
    # For a sigmoid: the class its p is the probability of. "good" when the model was trained with defective as
    # class 0 (Keras' flow_from_directory sorts class folders by name: def_front/ before ok_front/); p_defect = 1 - p.
    positive: Literal["defective", "good"] = "defective"
    dtype: TensorDType = "float32"
    scale: float = 0.0
    zero_point: int = 0

    @model_validator(mode="after")
    def _one_way_to_say_which_class(self) -> OutputSpec:
        if self.kind == "sigmoid" and self.defect_index != 0:
            raise ValueError("a sigmoid output has one column: defect_index must be 0")
        if self.kind == "softmax2" and self.positive != "defective":
            raise ValueError("a softmax2 output names its defective column with defect_index, not positive")
        return self


class Decision(_Frozen):
    """p_defect > threshold means defective (strictly, as the original app did); inside the band is low-confidence."""

    threshold: Probability = 0.5
    low_confidence_band: Band = (0.3, 0.7)


class FileRef(_Frozen):
    path: str  # relative to the manifest's folder when the file sits beside it
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class GradCamSpec(_Frozen):
    """Where and how heatmaps are computed (edge/gradcam/cam.py). A manifest written before methods were chosen
    has only ``layer``: plain Grad-CAM there, as the original app did."""

    layer: str
    also: tuple[str, ...] = ()  # further layers fused with ``layer`` (their maps averaged at the finest resolution)
    method: CamMethod = "gradcam"
    chosen_by: str = ""  # how the converter chose them, for the report and the curious ("given", a measurement)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer, *self.also)


class Spread(_Frozen):
    """A figure over a set of images: its 5th percentile, median and 95th percentile."""

    p5: float
    median: float
    p95: float


class FramingSpec(_Frozen):
    """How the training (or evaluation) images frame their part, measured by the unit's own locator
    (:mod:`core.framing`): the unit crops parts to ``span`` and compares its inputs with the rest."""

    images: int = Field(ge=1)
    located: float = Field(ge=0, le=1)  # share of the images in which a part was found at all
    span: Spread  # the part's longer side over the image's
    area: Spread  # share of the image's pixels that are the part
    offset: Spread  # the part's centre from the image's, as a share of its size
    background: Spread  # grey level of the border around the part
    pixel_threshold: int = 30  # grey levels from the background that make a pixel the part's
    measured_on: str = ""  # which images: a folder, or "synthetic parts"


class SignatureSpec(_Frozen):
    """What the model has seen (:mod:`core.signature`): the ``.tflite`` gives the pooled features before its last
    layer as a second output, and ``file`` holds their mean and principal directions over the training images."""

    file: FileRef  # NAME.signature.npz
    features: int = Field(gt=0)  # the features output's width
    images: int = Field(gt=0)  # training images it was fit on
    threshold: float = Field(gt=0)  # a score above this is unfamiliar
    chosen_by: str = ""  # how the threshold was chosen, and on what
    held_out_below: float = Field(default=0.0, ge=0, le=1)  # share of held-out images scoring below it


class Variant(_Frozen):
    """Another conversion of the same model that met parity too, with its own manifest (``NAME~QUANTIZATION.json``,
    its .tflite and verification set beside it): a unit times each on its own hardware and runs the fastest
    (``edge/variants.py``). A model installed on a unit names none: it is the one chosen."""

    quantization: Quantization
    manifest: FileRef


class Manifest(_Frozen):
    schema_: Literal[1] = Field(default=1, alias="schema")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    architecture: str
    quantization: Quantization
    tflite: FileRef
    source: FileRef  # the Keras file the .tflite came from (a SavedModel's saved_model.pb), used by Grad-CAM
    input: InputSpec
    output: OutputSpec
    labels: tuple[str, str] = ("good", "defective")
    decision: Decision = Decision()
    gradcam: GradCamSpec | None = None  # None: no heatmaps (a SavedModel has no Keras layers to look into)
    parity: dict[str, Any] = Field(default_factory=dict)
    # NAME.verify.json: images near the threshold and spread over p, with Keras' p_defect for each, so a unit can
    # re-prove parity on its own runtime and CPU (core/verify.py). None for models converted before it existed.
    verification: FileRef | None = None
    # How the training images frame their part; None for models converted before it was measured (the unit then
    # crops with a default margin, and says it cannot compare: ``defect-convert framing`` adds it).
    framing: FramingSpec | None = None
    # None: the model gives no features (converted before, or its graph has no pooled layer before a Dense head).
    signature: SignatureSpec | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""
    variants: tuple[Variant, ...] = ()  # the other conversions that met parity, fastest first on the converter

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        """The file's text; ``variants`` only when there are some, so a model converted with one reads as before
        (and as a unit of an earlier version expects it)."""
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude=set() if self.variants else {"variants"}),
                          indent=2, sort_keys=False) + "\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_ref(path: Path, relative_to: Path) -> FileRef:
    """Describe ``path`` for a manifest stored in ``relative_to``: relative path when possible, sha256, size."""
    try:
        shown = os.path.relpath(path.resolve(), relative_to.resolve())
    except ValueError:  # another drive on Windows
        shown = str(path.resolve())
    return FileRef(path=shown, sha256=sha256_file(path), size_bytes=path.stat().st_size)


def resolve(manifest_path: Path, ref: FileRef) -> Path:
    p = Path(ref.path)
    return p if p.is_absolute() else (manifest_path.parent / p)


def _one_line(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors())


def load(manifest_path: Path, *, verify: bool = True) -> Manifest:
    """Read and validate a manifest; with ``verify``, check that the .tflite beside it has the recorded sha256.

    Raises :class:`ManifestError` with one line naming the file and what is wrong.
    """
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{manifest_path}: manifest missing (convert the model with defect-convert)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{manifest_path}: manifest unreadable: {e}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{manifest_path}: manifest must be a JSON object")
    if raw.get("schema") != SCHEMA_VERSION:
        raise ManifestError(f"{manifest_path}: manifest schema {raw.get('schema')!r} is not supported "
                            f"(this software reads schema {SCHEMA_VERSION})")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        raise ManifestError(f"{manifest_path}: manifest malformed: {_one_line(e)}") from None
    if verify:
        tfl = resolve(manifest_path, m.tflite)
        if not tfl.is_file():
            raise ManifestError(f"{manifest_path}: model file {tfl} is missing")
        actual = sha256_file(tfl)
        if actual != m.tflite.sha256:
            raise ManifestError(f"{manifest_path}: sha256 of {tfl.name} is {actual[:12]}…, manifest says "
                                f"{m.tflite.sha256[:12]}… (model replaced or corrupted; re-convert it)")
    return m


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so nothing is ever half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; models and manifests are read by the service user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
