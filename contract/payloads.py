"""Every JSON payload of the MQTT contract, typed: the unit builds them, the relay and the console read them.

One model per message (``docs/mqtt.md`` shows each as a unit sends it). Builders are the models' constructors and
:func:`dumps`; readers call :func:`read`, which bounds the size, checks the JSON against the model and the device
id against the topic, and raises :class:`PayloadError` with the counter it belongs under: a hostile message is
counted and dropped, never stored and never a crash. Models accept keys they do not know (a newer unit may add
fields) and keep them; the keys they know are checked strictly.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract import topics
from contract.topics import AlertKind, Command

SCHEMA = 1
MAX_JSON_BYTES = 64 * 1024  # a status or metrics message is a few KiB; anything far larger is not one of ours


def _band(v: tuple[float, float]) -> tuple[float, float]:
    if not 0.0 <= v[0] <= v[1] <= 1.0:
        raise ValueError("low_confidence_band must be [lo, hi] with 0 <= lo <= hi <= 1")
    return v


# The low-confidence band of a decision: the one check, wherever a band is given (manifest, edge.toml, command).
Band = Annotated[tuple[float, float], AfterValidator(_band)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# A region of a frame in its pixels: x, y, width, height (the crop a model was fed).
Box = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(gt=0)],
            Annotated[int, Field(gt=0)]]
# How a heatmap is computed (docs/gradcam.md); "auto" is the one the model's manifest names, chosen by measurement
# when the model was converted.
# A part's vocabulary, here once: the unit decides with it, the console counts by it, the wire carries it.
Verdict = Literal["ok", "ng", "unsure", "missed"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
TriggerSource = Literal["presence", "mqtt", "gpio", "modbus", "opcua", "api"]
Aggregate = Literal["max", "mean", "centred"]  # a part's p_defect from its frames'
CamMethod = Literal["gradcam", "gradcam++", "layercam", "hirescam"]
HeatmapMethod = Literal["auto", CamMethod]
HEATMAP_METHODS: tuple[str, ...] = get_args(HeatmapMethod)
CAM_METHODS: tuple[CamMethod, ...] = get_args(CamMethod)


class PayloadError(ValueError):
    """A message that is not acceptable; ``reason`` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Message(BaseModel):
    """The envelope every JSON message carries: ``schema``, ``device_id``, ``ts`` (UTC ISO-8601 with ``Z``)."""

    # allow_inf_nan=False: JSON has no NaN, so a message holding one is refused when it is built, not when it is sent.
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True, allow_inf_nan=False)
    # Optional fields named here are left out of the JSON when None, as the unit has always sent them.
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    schema_version: int = Field(default=SCHEMA, alias="schema")
    device_id: str = Field(pattern=topics.DEVICE_ID.pattern)
    ts: str = Field(default_factory=topics.utc_now, pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    name: str = Field(max_length=100)
    quantization: str = Field(max_length=20)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class StatusModel(ModelRef):
    architecture: str = ""
    runtime: str = ""
    threads: int = 0
    threshold: Probability = 0.5
    low_confidence_band: Band = (0.0, 0.0)
    # a model converted with variants: each as this unit timed it (quantization, verified, latency_ms, memory_mb,
    # agreement, chosen, reason), the one it runs marked chosen (docs/releases.md)
    variants: list[dict[str, Any]] | None = None


class CameraState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    source: str = ""
    state: str
    frames: int = 0
    reconnects: int = 0
    stalls: int = 0
    last_error: str = ""


class Status(Message):
    """Retained: what the unit runs and how it is."""

    software_version: str
    # this process, new at every start: two units given one device id are told apart by it (docs/mqtt.md)
    instance_id: str | None = Field(default=None, max_length=40)
    started_at: str
    uptime_s: float
    mode: str
    model: StatusModel
    camera: CameraState
    gradcam: dict[str, Any]
    model_refused: str | None = None  # the last model the unit would not load (cmd/model), and why
    framing: dict[str, Any] | None = None  # part modes: the line's framing against the training images'
    # models with a signature: the threshold, and how many inputs so far were unlike the training ones
    familiarity: dict[str, Any] | None = None
    # the threshold and the low-confidence band in force, each with where it came from: model, config or command
    decision: dict[str, Any] | None = None
    # part modes: presence's belt (learnt, loaded, relearning) and the triggers (debounce, duplicates per source)
    parts: dict[str, Any] | None = None

    # another process connected as this unit since it started (two units with one device id): what it said of itself
    twin: str | None = Field(default=None, max_length=200)
    # a release on its way (docs/releases.md): name, version, state (offered, downloading, verified, shadow, promoted;
    # failed, rejected, rolled_back) with its reason, and the shadow run's figures
    release: dict[str, Any] | None = None

    omit_if_none = frozenset({"model_refused", "framing", "familiarity", "decision", "parts", "instance_id", "twin",
                              "release"})


class Result(Message):
    """One per classified frame."""

    omit_if_none = frozenset({"part_id", "crop", "ood", "unfamiliar"})
    frame_id: str = Field(pattern=topics.FRAME_ID.pattern)
    label: str = Field(max_length=40)  # the manifest's label: "good" / "defective" unless it names others
    defective: bool
    p_defect: Probability
    confidence: Probability
    threshold: Probability
    low_confidence: bool
    model: ModelRef
    timings_ms: dict[str, float]
    part_id: str | None = Field(default=None, pattern=topics.FRAME_ID.pattern)  # part modes: the part it was for
    crop: Box | None = None  # the region of the frame the model saw, when cropped to the part
    ood: float | None = Field(default=None, ge=0)  # distance from the model's training inputs (~1 for them)
    unfamiliar: bool | None = None  # ood above the model's threshold: unlike anything it was trained on


class PartFrame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    frame_id: str = Field(pattern=topics.FRAME_ID.pattern)
    p_defect: Probability


class Part(Message):
    """One verdict per part (part modes): what the line acts on. ``verdict`` is ``ok``, ``ng``, ``unsure`` (inside
    the low-confidence band) or ``missed`` (no frame in time: ``error`` says why, and the p fields are absent)."""

    omit_if_none = frozenset({"label", "defective", "p_defect", "confidence", "threshold", "low_confidence",
                              "error", "frame_id", "crop", "framing", "ood", "unfamiliar"})
    part_id: str = Field(pattern=topics.FRAME_ID.pattern)
    seq: int = Field(ge=1)
    trigger: TriggerSource
    verdict: Verdict
    aggregate: Aggregate
    frames: list[PartFrame]
    frame_id: str | None = Field(default=None, pattern=topics.FRAME_ID.pattern)  # the frame that decided it
    label: str | None = Field(default=None, max_length=40)
    defective: bool | None = None
    p_defect: Probability | None = None
    confidence: Probability | None = None
    threshold: Probability | None = None
    low_confidence: bool | None = None
    model: ModelRef
    timings_ms: dict[str, float]  # trigger_to_first_frame, trigger_to_verdict
    error: str | None = None
    crop: Box | None = None  # the deciding frame's region the model saw (the part, cropped square)
    framing: dict[str, float] | None = None  # how that region frames the part: span, area, offset, background
    ood: float | None = Field(default=None, ge=0)  # the deciding frame's distance from the training inputs
    unfamiliar: bool | None = None  # ood above the model's threshold


class Alert(Message):
    """A defect, a low-confidence call, a camera gone (and back), frames the model failed on, framing unlike the
    training images, or inputs unlike them (``kind``)."""

    omit_if_none = frozenset({"label", "p_defect", "confidence", "threshold", "model", "since", "error",
                              "frame_errors", "offline_s", "part_id", "problems", "ood", "ood_threshold"})
    kind: AlertKind
    frame_id: str | None = Field(pattern=topics.FRAME_ID.pattern)
    dedup_key: str = Field(pattern=topics.DEDUP_KEY.pattern)
    label: str | None = None
    p_defect: Probability | None = None
    confidence: Probability | None = None
    threshold: Probability | None = None
    model: str | None = None
    since: str | None = None  # camera_offline, camera_back: when the camera went
    error: str | None = None  # camera_offline, model_error: the last error
    frame_errors: int | None = None  # model_error: frames that failed since the last alert
    offline_s: float | None = None  # camera_back: how long the camera was away
    problems: list[str] | None = None  # framing: what is unlike the training images, and what to change
    ood: float | None = None  # unfamiliar_input: the last input's distance from the training inputs
    ood_threshold: float | None = None  # unfamiliar_input: the model's threshold
    part_id: str | None = Field(default=None, pattern=topics.FRAME_ID.pattern)  # part modes: the part it is about


class Reviewed(Message):
    """A person's verdict on a unit's call, from the console (``device_id`` is the console's id): the relay stops
    escalating an alert once its frame is reviewed."""

    unit: str = Field(pattern=topics.DEVICE_ID.pattern)
    frame_id: str = Field(pattern=topics.FRAME_ID.pattern)
    verdict: str = Field(max_length=40)
    by: str = Field(max_length=100)


class FileRequest(BaseModel):
    """A unit asks the console for a piece of a release repository's file (``topics.RELEASE_GET``): the repository
    is public, its files checked by the unit's TUF client, so the transport need only deliver bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[0-9a-f]{8,32}$")  # the request's, echoed in its answer
    path: str = Field(pattern=r"^(metadata|targets)/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", max_length=300)
    offset: int = Field(ge=0)


class FilePart(BaseModel):
    """The header of the console's answer: ``status`` 200 (from the start) or 206 (from ``offset``), 404 (no such
    file), 416 (``offset`` at or past its end), as HTTP would say; ``size`` the whole file's."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    status: Literal[200, 206, 404, 416]
    offset: int = Field(ge=0)
    size: int = Field(ge=0)


def file_part(header: FilePart, data: bytes) -> bytes:
    """An answer's wire form: the header as one JSON line, then the file's bytes."""
    return header.model_dump_json().encode() + b"\n" + data


def read_file_part(payload: bytes) -> tuple[FilePart, bytes]:
    """An answer's header and bytes; :class:`PayloadError` for anything else."""
    head, sep, data = payload.partition(b"\n")
    try:
        if not sep or len(head) > 300:
            raise ValueError("no header line")
        return FilePart.model_validate_json(head), data
    except ValueError as e:
        raise PayloadError("bad_json", f"not a release file part: {str(e).splitlines()[0][:100]}") from None


class Metrics(Message):
    """Every ``metrics.interval_s``: rates, latency percentiles per stage, the board's health, the outbox."""

    interval_s: float
    fps: float
    frames: int
    dropped_frames: int
    # on_demand: frames no trigger asked for, which a camera delivers and the unit lets pass (not a loss)
    unused_frames: int | None = None
    frame_errors: int
    latency_ms: dict[str, dict[str, float]]
    cpu_temp_c: float | None
    load: list[float]
    rss_mb: float
    outbox: dict[str, Any]
    mqtt: dict[str, Any]
    camera: dict[str, Any]
    alerts_suppressed: int
    uptime_s: float
    parts: dict[str, Any] | None = None  # part modes: judged, missed, pending triggers, line interfaces

    omit_if_none = frozenset({"parts", "unused_frames"})


class GradcamEvent(Message):
    """A heatmap was made (its JPEG is on ``gradcam/<frame_id>``), or could not be (``error``)."""

    omit_if_none = frozenset({"error"})
    frame_id: str = Field(pattern=topics.FRAME_ID.pattern)
    method: str
    ok: bool
    layer: str
    model: str
    p_defect_keras: float | None
    p_defect_tflite: float
    timings_ms: dict[str, float]
    request_id: str | None
    auto: str | None
    error: str | None = None


class Reply(Message):
    """The answer to every command: ``ok`` with a ``result``, or not ok with an ``error`` that says why."""

    omit_if_none = frozenset({"result", "error"})
    command: str = Field(max_length=40)
    request_id: str | None
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


M = TypeVar("M", bound=Message)


class RelayLink(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    reconnects: int = Field(ge=0)
    last_error: str = ""


class RelayStatus(Message):
    """Retained on ``defect-relay/<id>/status`` (and sent as its metrics): the relay's queue and its link. The
    ``device_id`` is the relay's own id."""

    started_at: str
    uptime_s: float
    counters: dict[str, int]  # alerts taken in, refused, mailed, ... since the queue was made
    outgoing: dict[str, int]  # deliveries by state: pending, sent, dead
    dead_letters: list[dict[str, Any]]  # the last deliveries given up on, with why
    mqtt: RelayLink


def dumps(message: Message) -> bytes:
    """The wire form: compact UTF-8 JSON, numbers as numbers, no NaN (refused when a message is built; an untyped
    value would be null). pydantic's own serialiser: a quarter of the time of a dict through ``json.dumps``, and the
    unit sends one per frame."""
    return message.model_dump_json(
        by_alias=True, exclude={k for k in message.omit_if_none if getattr(message, k, 0) is None}).encode()


def read(model: type[M], payload: bytes, *, device_id: str, max_bytes: int = MAX_JSON_BYTES) -> M:
    """``payload`` as ``model``, from the unit the topic names; :class:`PayloadError` says why not."""
    if len(payload) > max_bytes:
        raise PayloadError("oversize", f"{model.__name__.lower()} of {len(payload)} bytes > {max_bytes}")
    try:  # the common case, parsed and checked in one pass of pydantic's own JSON parser
        message = model.model_validate_json(payload)
        if message.device_id == device_id:
            return message
    except ValidationError:
        pass  # below, the same checks one by one say which reason it is
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PayloadError("not_json", f"{model.__name__.lower()} payload is not JSON") from None
    if not isinstance(data, dict):
        raise PayloadError("not_json", f"{model.__name__.lower()} payload is not a JSON object")
    if "device_id" in data and data["device_id"] != device_id:
        raise PayloadError("device_mismatch",
                           f"payload device {str(data.get('device_id'))[:80]!r} != topic {device_id}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "payload"
        raise PayloadError("bad_field", f"{where}: {first['msg']}"[:200]) from None


# -- commands: what may be said to a unit on <base>/cmd/<name> --------------------------------------------------------

MAX_COMMAND_BYTES = 16 * 1024


class CommandError(ValueError):
    """The command cannot be carried out; the message goes back to the sender in the reply."""


class CommandArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    request_id: str | None = Field(default=None, max_length=128)  # echoed in the reply (for MQTT 3.1.1 callers)


class ModelArgs(CommandArgs):
    name: str = Field(min_length=1, max_length=100)


class ThresholdArgs(CommandArgs):
    """Set the threshold and/or the band; they stay, across model swaps and restarts, until ``reset`` drops them
    back to the unit's configuration or the model's own."""

    threshold: Probability | None = None
    low_confidence_band: Band | None = None
    reset: bool = False

    @model_validator(mode="after")
    def _something(self) -> ThresholdArgs:
        if self.reset == (self.threshold is not None or self.low_confidence_band is not None):
            raise ValueError("give threshold and/or low_confidence_band, or reset: true alone")
        return self


class TriggerArgs(CommandArgs):
    pass


class LearnBeltArgs(CommandArgs):
    """Presence learns the empty belt again from the next frames (after the light or the camera was changed)."""


class ReleaseArgs(CommandArgs):
    """Fetch a model's release from the repository (the newest, or ``version``), prove it here, run it in shadow."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: int | None = Field(default=None, ge=1)


class PromoteArgs(CommandArgs):
    """The candidate in shadow becomes the active model (installed, swapped in, watched)."""


class RejectArgs(CommandArgs):
    """The candidate is dropped; the active model was never touched."""


class RollbackArgs(CommandArgs):
    """The model a promotion replaced comes back, in memory at once and then on disk."""


class FeedbackArgs(CommandArgs):
    frame_id: str = Field(min_length=1, max_length=128)
    label: Literal["good", "defective"]  # what the part really was
    note: str = Field(default="", max_length=1000)


class GradcamArgs(CommandArgs):
    frame_id: str = Field(min_length=1, max_length=128)
    method: HeatmapMethod = "auto"


COMMAND_ARGS: dict[Command, type[CommandArgs]] = {"model": ModelArgs, "threshold": ThresholdArgs,
                                               "trigger": TriggerArgs, "feedback": FeedbackArgs,
                                               "gradcam": GradcamArgs, "learn_belt": LearnBeltArgs,
                                               "release": ReleaseArgs, "promote": PromoteArgs, "reject": RejectArgs,
                                               "rollback": RollbackArgs}


def parse_command(name: str, payload: bytes | bytearray) -> CommandArgs:
    """The arguments of command ``name``, or :class:`CommandError` with a message fit for the reply.

    Total: whatever the bytes, the answer is arguments or a ``CommandError`` (``tests/test_payloads.py`` fuzzes it).
    """
    if name not in COMMAND_ARGS:
        raise CommandError(f"unknown command {name[:40]!r}; known: {', '.join(COMMAND_ARGS)}")
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        text = bytes(payload).decode("utf-8") if payload.strip() else "{}"
        data = json.loads(text)
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CommandError(f"payload is not JSON: {e.msg} at position {e.pos}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of 5,000 digits, or arrays nested 10,000 deep
        raise CommandError(f"payload is not usable JSON: {str(e)[:120] or type(e).__name__}") from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, not {type(data).__name__}")
    try:
        # From the JSON text, not the decoded dict: strict mode then takes JSON arrays for tuples, and still
        # refuses "0.5" for a number or 1 for a boolean.
        return COMMAND_ARGS[name].model_validate_json(text)
    except ValidationError as e:
        raise CommandError("; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'payload'}: "
                                     f"{err['msg'].removeprefix('Value error, ')}"
                                     for err in e.errors())[:500]) from None
    except (ValueError, RecursionError) as e:
        raise CommandError(f"payload is not usable: {str(e)[:200] or type(e).__name__}") from None
