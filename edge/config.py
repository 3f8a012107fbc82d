"""``edge.toml``: the unit's configuration, validated once at start (``docs/configuration.md``).

Unknown keys are errors (a typo must not silently fall back to a default), and every problem is reported in one
message naming each key. Secrets never need to be in the file: the broker password and the TLS key password come
from ``password_file`` / the environment (``DEFECT_EDGE_MQTT_PASSWORD``), or from a systemd credential
(``$CREDENTIALS_DIRECTORY/mqtt_password``). ``examples/edge.toml`` documents every key with its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from contract import topics
from contract.payloads import Aggregate, Band, HeatmapMethod
from contract.settings import (
    BrokerSettings,
    ConfigError,
    Section,
    TlsSettings,
    check_prefix,
    load_file,
    read_secret,
    state_directory,
    validate,
)

if TYPE_CHECKING:
    from core.preprocess import Roi
    from edge.sources import FrameSource

__all__ = ["ConfigError", "EdgeConfig", "TlsSettings", "load", "parse"]

PASSWORD_ENV = "DEFECT_EDGE_MQTT_PASSWORD"
PASSWORD_CREDENTIAL = "mqtt_password"

class DeviceConfig(Section):
    id: str = Field(description="this unit's id: one MQTT topic level")

    @field_validator("id")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        if not topics.DEVICE_ID.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-' (one MQTT topic level)")
        return v


class MqttConfig(BrokerSettings):
    prefix: str = topics.DEFAULT_PREFIX
    result_qos: Literal[0, 1] = 0  # 0: results may be dropped while the broker is away (counted); 1: outbox
    max_inflight: int = Field(default=100, ge=1, le=10000)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_prefix(v)


class RoiConfig(Section):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CameraConfig(Section):
    source: str = Field(description="picamera2[:N], /dev/videoN, N, rtsp://..., a GStreamer pipeline, or a path")
    fps: float = Field(default=0.0, ge=0)  # replay rate / requested camera rate; 0 = native
    loop: bool = False  # replay only
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)
    offline_alert_after_s: float = Field(default=30.0, ge=0)
    roi: RoiConfig | None = None

    def frame_source(self) -> FrameSource:
        """The backend these settings describe (not opened yet); the daemon and check-config share it."""
        from edge.sources import source_from_spec

        return source_from_spec(self.source, fps=self.fps, loop=self.loop, width=self.width, height=self.height)

    def region(self) -> Roi | None:
        """The ROI as preprocessing takes it."""
        from core.preprocess import Roi

        r = self.roi
        return Roi(r.x, r.y, r.width, r.height) if r else None


class ModelConfig(Section):
    name: str = "mobilenetv2"
    models_dir: Path = Path("/var/lib/defect-edge/models")
    threads: int | None = Field(default=None, ge=1, le=64)
    delegate: str | None = None  # e.g. libedgetpu.so.1 for a Coral Edge TPU
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: the manifest's
    low_confidence_band: Band | None = None
    # a model whose converter-recorded agreement with Keras is below this is refused (0: load any)
    min_agreement: float = Field(default=0.99, ge=0, le=1)
    # a model converted with variants: the most the one chosen may add to the unit's memory, in MB (0: no bound);
    # of those that fit and pass their proof here, the fastest on this unit runs (docs/releases.md)
    memory_budget_mb: float = Field(default=0.0, ge=0)


class ReleasesConfig(Section):
    """Model releases from the console's repository (docs/releases.md): ``cmd/release``, shadow, promotion."""

    # the repository, e.g. "http://console.plant:8080/releases", or "mqtt://defect-console" (through the broker, from
    # the console with that MQTT prefix); "": this unit takes no releases
    url: str = ""
    root_file: Path = Path("/etc/defect-edge/release-root.json")  # the repository's root metadata, trusted as given
    keep: int = Field(default=3, ge=1, le=20)  # releases kept on the unit for a rollback
    shadow_share: float = Field(default=0.25, ge=0, le=1)  # of the live frames the candidate also judges in shadow
    watch_results: int = Field(default=200, ge=10)  # after a promotion: results watched, the old model kept loaded
    latency_factor: float = Field(default=2.0, gt=1)  # roll back when inference p95 exceeds the shadow's so many times
    ng_rate_delta: float = Field(default=0.2, gt=0, le=1)  # roll back when the defective rate departs this far

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://", "mqtt://")):
            raise ValueError("must be an http:// or https:// URL, or mqtt://<the console's MQTT prefix> for a unit "
                             "that reaches nothing but the broker (TUF makes the transport's trust unneeded)")
        if v.startswith("mqtt://") and not topics.PREFIX.match(v.removeprefix("mqtt://").rstrip("/")):
            raise ValueError("mqtt:// must name the console's MQTT prefix, e.g. mqtt://defect-console")
        return v.rstrip("/")


class InferenceConfig(Section):
    mode: Literal["continuous", "on_demand"] = "continuous"
    target_fps: float = Field(default=0.0, ge=0)  # 0 = as fast as frames come
    queue_size: int = Field(default=1, ge=1, le=2)


class AlertsConfig(Section):
    on_defect: bool = True
    on_low_confidence: bool = True
    rearm_after_good_frames: int = Field(default=3, ge=1)  # a new part must be seen before the next alert
    repeat_after_s: float = Field(default=300.0, ge=0)  # the same part still bad after this long alerts again
    snapshot: bool = True
    snapshot_jpeg_quality: int = Field(default=85, ge=10, le=100)
    sample_share: float = Field(default=0.0, ge=0, le=1)  # calls without an alert (OK parts) sent with a snapshot
    sample_per_minute: int = Field(default=6, ge=0)  # at most this many sampled snapshots a minute
    on_unfamiliar: bool = True  # unfamiliar_input alerts (models with a signature)
    unfamiliar_streak: int = Field(default=3, ge=1, le=1000)  # inputs in a row unlike the training ones: one alert


class MetricsConfig(Section):
    interval_s: float = Field(default=10.0, ge=1)


class StateConfig(Section):
    dir: Path = Field(default_factory=lambda: state_directory(Path("/var/lib/defect-edge")))
    outbox_max_mb: float = Field(default=64.0, gt=0)
    results_retention_days: float = Field(default=30.0, gt=0)
    results_max_rows: int = Field(default=1_000_000, ge=1000)
    ring_frames: int = Field(default=64, ge=1)
    ring_max_mb: float = Field(default=128.0, gt=0)


class GradcamConfig(Section):
    enabled: bool = True
    # For automatic heatmaps; cmd/gradcam may ask another. "auto": the model's own, chosen when it was converted.
    method: HeatmapMethod = "auto"
    # Layers to compute heatmaps at instead of the model's (e.g. ["Conv_1"], the original app's for MobileNetV2).
    layers: list[str] = []
    auto_on: list[Literal["defect", "low_confidence"]] = []  # alert kinds that get a heatmap automatically
    threads: int = Field(default=1, ge=1, le=64)  # TensorFlow threads in the worker: inference keeps its cores
    nice: int = Field(default=10, ge=0, le=19)  # the worker's CPU priority below inference's
    # While heatmaps queue up, the worker computes at most this share of the time and rests the remainder, so a burst
    # of requests leaves inference most of the cores; a lone request is never delayed. At one TensorFlow thread the
    # worker takes duty_cycle of one core: on a 2-core unit 0.5 left inference about three quarters of its frame rate,
    # no margin (docs/benchmarks.md). A burst takes 1 / duty_cycle times as long as computed flat out.
    duty_cycle: float = Field(default=0.35, gt=0, le=1)
    idle_timeout_s: float = Field(default=300.0, gt=0)  # stop the worker (and free its memory) when idle
    request_timeout_s: float = Field(default=30.0, gt=0)  # a worker silent this long is killed and restarted
    alpha: float = Field(default=0.45, ge=0, le=1)  # heatmap weight in the overlay
    jpeg_quality: int = Field(default=90, ge=10, le=100)


class PartsConfig(Section):
    """One verdict per part (docs/line.md): by presence on the ROI, or per trigger in on_demand mode."""

    presence: bool = False  # continuous mode: classify only frames with a part in position, one verdict per part
    aggregate: Aggregate = "max"  # a part's p_defect from its frames'
    frames_per_trigger: int = Field(default=1, ge=1, le=16)  # on_demand: frames classified per trigger
    max_frame_delay_ms: float = Field(default=100.0, gt=0)  # on_demand: a first frame later than this is a miss
    max_pending: int = Field(default=8, ge=1, le=1000)  # on_demand: triggers waiting; more are answered missed
    # on_demand: a trigger sooner than this after the last from the same source is that part again (counted, not a
    # part); default max_frame_delay_ms: two triggers that close would be judged on the same frame
    debounce_ms: float | None = Field(default=None, ge=0, le=60000)
    frame_results: bool = True  # also publish each classified frame's result
    gap_frames: int = Field(default=1, ge=0, le=30)  # presence: frames out of position tolerated within one part
    pixel_threshold: int = Field(default=30, ge=1, le=255)  # presence: grey levels from the empty belt
    min_area: float = Field(default=0.02, gt=0, lt=1)  # presence: share of the ROI a part covers at least
    centre_tolerance: float = Field(default=0.15, gt=0, le=0.5)  # presence: centre offset as a share of the ROI
    learn_frames: int = Field(default=30, ge=1, le=10000)  # presence: frames the empty belt is learnt from (by vote)
    # What the model sees (docs/framing.md): "part", the located part cropped square with the training images'
    # margin; "roi", the whole ROI (or frame), for a window already framed like the training photos.
    crop: Literal["part", "roi"] = "part"
    span: float | None = Field(default=None, gt=0.05, le=1)  # the part's share of the crop's side; default: manifest's


class GpioConfig(Section):
    enabled: bool = False
    trigger_pin: int | None = Field(default=None, ge=0, le=63)  # BCM numbers, as gpiozero takes them
    trigger_active_high: bool = True
    trigger_bounce_ms: float = Field(default=5.0, ge=0, le=1000)
    reject_pin: int | None = Field(default=None, ge=0, le=63)
    ok_pin: int | None = Field(default=None, ge=0, le=63)
    ready_pin: int | None = Field(default=None, ge=0, le=63)
    pulse_ms: float = Field(default=200.0, gt=0, le=60000)
    reject_delay_ms: float = Field(default=0.0, ge=0, le=600000)  # belt travel from the camera to the ejector
    reject_unsure: bool = True  # unsure and missed parts are rejected too (fail safe)


class ModbusConfig(Section):
    enabled: bool = False
    host: str = "0.0.0.0"  # the line's network: bind to its interface's address where the unit has two
    port: int = Field(default=5020, ge=1, le=65535)  # 502 needs CAP_NET_BIND_SERVICE
    device_id: int = Field(default=1, ge=0, le=247)


class OpcUaConfig(Section):
    enabled: bool = False
    endpoint: str = Field(default="opc.tcp://0.0.0.0:4840/defect-edge/", pattern=r"^opc\.tcp://[^\s]+$")
    namespace: str = Field(default="urn:defect-inspection:edge", min_length=1, max_length=200)


class LineConfig(Section):
    gpio: GpioConfig = GpioConfig()
    modbus: ModbusConfig = ModbusConfig()
    opcua: OpcUaConfig = OpcUaConfig()


class HomeAssistantConfig(Section):
    enabled: bool = False
    prefix: str = "homeassistant"


class EdgeConfig(Section):
    device: DeviceConfig
    mqtt: MqttConfig = MqttConfig()
    camera: CameraConfig
    model: ModelConfig = ModelConfig()
    releases: ReleasesConfig = ReleasesConfig()
    inference: InferenceConfig = InferenceConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    state: StateConfig = Field(default_factory=StateConfig)  # reads $STATE_DIRECTORY when loaded, not imported
    gradcam: GradcamConfig = GradcamConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    parts: PartsConfig = PartsConfig()
    line: LineConfig = LineConfig()

    @model_validator(mode="after")
    def _parts_fit_the_mode(self) -> EdgeConfig:
        on_demand = self.inference.mode == "on_demand"
        if self.parts.presence and on_demand:
            raise ValueError("parts.presence judges parts in continuous mode; on_demand judges one per trigger: "
                             "choose one")
        line = [n for n in ("gpio", "modbus", "opcua") if getattr(self.line, n).enabled]
        if line and not (on_demand or self.parts.presence):
            raise ValueError(f"line.{line[0]} delivers part verdicts: set inference.mode = \"on_demand\" (a "
                             "trigger per part) or parts.presence = true")
        g = self.line.gpio
        if g.enabled and g.trigger_pin is not None and not on_demand:
            raise ValueError("line.gpio.trigger_pin triggers parts: it needs inference.mode = \"on_demand\"")
        pins = [p for p in (g.trigger_pin, g.reject_pin, g.ok_pin, g.ready_pin) if p is not None]
        if len(pins) != len(set(pins)):
            raise ValueError(f"line.gpio: a pin is used twice ({sorted(pins)})")
        if self.line.modbus.enabled and self.line.opcua.enabled and \
                self.line.opcua.endpoint.rsplit(":", 1)[-1].split("/")[0] == str(self.line.modbus.port):
            raise ValueError("line.modbus.port and line.opcua's endpoint use the same port")
        return self

    def warnings(self) -> list[str]:
        """Settings that are valid but will hurt at the line: said by ``check-config`` and at start."""
        out = []
        p, fps = self.parts, self.camera.fps
        if self.inference.mode == "on_demand" and fps > 0 and p.max_frame_delay_ms < 1.5 * 1000 / fps:
            out.append(f"parts.max_frame_delay_ms = {p.max_frame_delay_ms:g} is under 1.5 frame periods at "
                       f"camera.fps = {fps:g} ({1.5 * 1000 / fps:.0f} ms): a trigger that falls just after an "
                       "exposure waits a whole period for the next frame, and its part is answered \"missed\"")
        return out

    @property
    def base_topic(self) -> str:
        return topics.base(self.mqtt.prefix, self.device.id)

    def mqtt_password(self) -> str:
        return read_secret(self.mqtt.password_file, PASSWORD_ENV, PASSWORD_CREDENTIAL, self.mqtt.password)


def _check_files(cfg: EdgeConfig) -> list[str]:
    problems = cfg.mqtt.file_problems()
    if not cfg.model.models_dir.is_dir():
        problems.append(f"model.models_dir: {cfg.model.models_dir} is not a folder")
    return problems


def parse(data: dict[str, Any], *, check_files: bool = True) -> EdgeConfig:
    cfg = validate(EdgeConfig, data)
    problems = _check_files(cfg) if check_files else []
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load(path: Path, *, check_files: bool = True) -> EdgeConfig:
    """Read and validate ``path``; :class:`ConfigError` names the file and every bad key."""
    return load_file(path, lambda data: parse(data, check_files=check_files))
