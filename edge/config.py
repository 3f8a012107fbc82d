"""``edge.toml``: the unit's configuration, validated once at start (DESIGN §9).

Unknown keys are errors (a typo must not silently fall back to a default), and every problem is reported in one
message naming each key. Secrets never need to be in the file: the broker password and the TLS key password come
from ``password_file`` / the environment (``DEFECT_EDGE_MQTT_PASSWORD``), or from a systemd credential
(``$CREDENTIALS_DIRECTORY/mqtt_password``). ``examples/edge.toml`` documents every key with its default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.mqtt import topics

if TYPE_CHECKING:
    from edge.preprocess import Roi
    from edge.sources import FrameSource

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older units
    import tomli as tomllib

PASSWORD_ENV = "DEFECT_EDGE_MQTT_PASSWORD"
PASSWORD_CREDENTIAL = "mqtt_password"


class ConfigError(ValueError):
    """The configuration is invalid; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceConfig(_Section):
    id: str = Field(description="this unit's id: one MQTT topic level")

    @field_validator("id")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        if not topics.DEVICE_ID.match(v):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-' (one MQTT topic level)")
        return v


class TlsConfig(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip hostname verification (never in production)


class MqttConfig(_Section):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    prefix: str = topics.DEFAULT_PREFIX
    client_id: str = ""  # default: defect-edge-<device id>
    username: str = ""
    password: str = ""  # prefer password_file or the environment
    password_file: Path | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    tls: TlsConfig | None = None
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    result_qos: Literal[0, 1] = 0  # 0: results may be dropped while the broker is away (counted); 1: outbox
    max_inflight: int = Field(default=100, ge=1, le=10000)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not topics.PREFIX.match(v):
            raise ValueError("must be topic levels of letters, digits, '_', '.', '-' separated by '/'")
        return v


class RoiConfig(_Section):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CameraConfig(_Section):
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
        from edge.preprocess import Roi

        r = self.roi
        return Roi(r.x, r.y, r.width, r.height) if r else None


class ModelConfig(_Section):
    name: str = "mobilenetv2"
    models_dir: Path = Path("/var/lib/defect-edge/models")
    threads: int | None = Field(default=None, ge=1, le=64)
    delegate: str | None = None  # e.g. libedgetpu.so.1 for a Coral Edge TPU
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: the manifest's
    low_confidence_band: tuple[float, float] | None = None


class InferenceConfig(_Section):
    mode: Literal["continuous", "on_demand"] = "continuous"
    target_fps: float = Field(default=0.0, ge=0)  # 0 = as fast as frames come
    queue_size: int = Field(default=1, ge=1, le=2)


class AlertsConfig(_Section):
    on_defect: bool = True
    on_low_confidence: bool = True
    rearm_after_good_frames: int = Field(default=3, ge=1)  # a new part must be seen before the next alert
    repeat_after_s: float = Field(default=300.0, ge=0)  # the same part still bad after this long alerts again
    snapshot: bool = True
    snapshot_jpeg_quality: int = Field(default=85, ge=10, le=100)


class MetricsConfig(_Section):
    interval_s: float = Field(default=10.0, ge=1)


class StateConfig(_Section):
    dir: Path = Field(default_factory=lambda: state_directory(Path("/var/lib/defect-edge")))
    outbox_max_mb: float = Field(default=64.0, gt=0)
    results_retention_days: float = Field(default=30.0, gt=0)
    results_max_rows: int = Field(default=1_000_000, ge=1000)
    ring_frames: int = Field(default=64, ge=1)
    ring_max_mb: float = Field(default=128.0, gt=0)


class GradcamConfig(_Section):
    enabled: bool = True
    method: Literal["gradcam", "gradcam++"] = "gradcam"  # for automatic heatmaps; cmd/gradcam may ask either
    auto_on: list[Literal["defect", "low_confidence"]] = []  # alert kinds that get a heatmap automatically
    threads: int = Field(default=1, ge=1, le=64)  # TensorFlow threads in the worker: inference keeps its cores
    nice: int = Field(default=10, ge=0, le=19)  # the worker's CPU priority below inference's
    idle_timeout_s: float = Field(default=300.0, gt=0)  # stop the worker (and free its memory) when idle
    request_timeout_s: float = Field(default=30.0, gt=0)  # a worker silent this long is killed and restarted
    alpha: float = Field(default=0.45, ge=0, le=1)  # heatmap weight in the overlay
    jpeg_quality: int = Field(default=90, ge=10, le=100)


class HomeAssistantConfig(_Section):
    enabled: bool = False
    prefix: str = "homeassistant"


class EdgeConfig(_Section):
    device: DeviceConfig
    mqtt: MqttConfig = MqttConfig()
    camera: CameraConfig
    model: ModelConfig = ModelConfig()
    inference: InferenceConfig = InferenceConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    state: StateConfig = Field(default_factory=StateConfig)  # reads $STATE_DIRECTORY when loaded, not imported
    gradcam: GradcamConfig = GradcamConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()

    @model_validator(mode="after")
    def _consistent(self) -> EdgeConfig:
        if self.mqtt.reconnect_min_s > self.mqtt.reconnect_max_s:
            raise ValueError("mqtt.reconnect_min_s must not exceed mqtt.reconnect_max_s")
        band = self.model.low_confidence_band
        if band is not None and not 0 <= band[0] <= band[1] <= 1:
            raise ValueError("model.low_confidence_band must be [lo, hi] with 0 <= lo <= hi <= 1")
        return self

    @property
    def base_topic(self) -> str:
        return topics.base(self.mqtt.prefix, self.device.id)

    def mqtt_password(self) -> str:
        return read_secret(self.mqtt.password_file, PASSWORD_ENV, PASSWORD_CREDENTIAL, self.mqtt.password)


def read_secret(file: Path | None, env: str, credential: str, inline: str) -> str:
    """A secret from its file, the environment, a systemd credential (LoadCredential=), or the config, in that order.

    The unit and the relay look their passwords up the same way, so an operator learns one rule.
    """
    if file:
        return file.read_text().strip()
    if os.environ.get(env):
        return os.environ[env]
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        # `make install` leaves an empty file, because LoadCredential= refuses a missing one: empty means none given.
        return (Path(cred_dir) / credential).read_text().strip() or inline
    return inline


def state_directory(default: Path) -> Path:
    """systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``, its first entry) when run by systemd, else ``default``.

    Each instance of ``defect-edge@.service`` gets its own ``/var/lib/defect-edge/<instance>``, and only that directory
    is writable under ``ProtectSystem=strict``: a configuration that leaves ``state.dir`` unset lands there.
    """
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given else default


def describe(err: ValidationError) -> str:
    """Every validation error as ``key.path: problem``, in one line (the relay's configuration uses it too)."""
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else "required key missing" \
            if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)


def _check_files(cfg: EdgeConfig) -> list[str]:
    problems = []
    files: list[tuple[str, Path | None]] = [("mqtt.password_file", cfg.mqtt.password_file)]
    if cfg.mqtt.tls:
        files += [("mqtt.tls.ca_file", cfg.mqtt.tls.ca_file), ("mqtt.tls.cert_file", cfg.mqtt.tls.cert_file),
                  ("mqtt.tls.key_file", cfg.mqtt.tls.key_file)]
    for key, path in files:
        if path is not None and not path.is_file():
            problems.append(f"{key}: {path} is not a readable file")
    if cfg.mqtt.tls and bool(cfg.mqtt.tls.cert_file) != bool(cfg.mqtt.tls.key_file):
        problems.append("mqtt.tls: cert_file and key_file go together")
    if not cfg.model.models_dir.is_dir():
        problems.append(f"model.models_dir: {cfg.model.models_dir} is not a folder")
    return problems


def parse(data: dict[str, Any], *, check_files: bool = True) -> EdgeConfig:
    try:
        cfg = EdgeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe(e)) from None
    problems = _check_files(cfg) if check_files else []
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``, or a one-line :class:`ConfigError` naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load(path: Path, *, check_files: bool = True) -> EdgeConfig:
    """Read and validate ``path``; :class:`ConfigError` names the file and every bad key."""
    data = read_toml(path)
    try:
        return parse(data, check_files=check_files)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
