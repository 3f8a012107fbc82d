"""``relay.toml``: the central relay's configuration, validated once at start (unknown keys are errors).

Secrets: the broker password from ``mqtt.password_file`` / ``$DEFECT_RELAY_MQTT_PASSWORD`` / credential
``mqtt_password``; the SMTP password from ``smtp.password_file`` / ``$DEFECT_RELAY_SMTP_PASSWORD`` / credential
``smtp_password``. ``examples/relay.toml`` documents every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from contract import topics
from contract.settings import (
    BrokerSettings,
    ConfigError,
    Section,
    check_prefix,
    load_file,
    read_secret,
    state_directory,
    validate,
)

__all__ = ["ConfigError", "RelayConfig", "load", "parse"]


class MqttConfig(BrokerSettings):
    edge_prefix: str = topics.DEFAULT_PREFIX  # the units' prefix: alerts come from <edge_prefix>/<device>/alert
    shared_group: str = "defect-relay"  # MQTT v5 shared subscription group: relays in one group split the fleet

    @field_validator("edge_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_prefix(v)


class SmtpConfig(Section):
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "starttls"  # ssl = implicit TLS (465), starttls (587)
    ca_file: Path | None = None  # trust this CA for the server certificate (default: the system's)
    username: str = ""
    password: str = ""
    password_file: Path | None = None
    sender: str = Field(default="defect-relay@localhost", alias="from")
    reply_to: str = ""
    timeout_s: float = Field(default=20.0, gt=0)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Route(Section):
    """Who hears about what: every matching route's recipients and webhooks get the alert."""

    devices: list[str] = ["*"]  # glob patterns on the device id, e.g. "line3-*"
    kinds: list[str] = list(topics.ALERT_KINDS)
    recipients: list[str] = []
    webhooks: list[str] = []

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        unknown = set(v) - set(topics.ALERT_KINDS)
        if unknown:
            raise ValueError(f"unknown alert kind(s) {sorted(unknown)}; known: {', '.join(topics.ALERT_KINDS)}")
        return v

    @field_validator("recipients")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            if "@" not in a or any(c in a for c in "\r\n<>,;\"' "):
                raise ValueError(f"{a!r} is not a plain e-mail address")
        return v


class StormConfig(Section):
    cooldown_s: float = Field(default=300.0, ge=0)  # after a mail for (device, kind), further alerts are digested
    digest_window_s: float = Field(default=300.0, gt=0)  # a digest collects alerts for this long, then goes out
    thumbnails: int = Field(default=4, ge=0, le=20)


class DeliveryConfig(Section):
    evidence_wait_s: float = Field(default=5.0, ge=0)  # wait this long for the snapshot and heatmap of an alert
    max_attempts: int = Field(default=20, ge=1)
    max_age_s: float = Field(default=86400.0, gt=0)
    backoff_initial_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=900.0, gt=0)


class LimitsConfig(Section):
    max_alert_bytes: int = Field(default=16 * 1024, ge=256)
    max_image_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)


class StateConfig(Section):
    dir: Path = Field(default_factory=lambda: state_directory(Path("/var/lib/defect-relay")))


class TemplatesConfig(Section):
    """Mail subjects (``string.Template``: ``$name`` is an alert field); each alert kind reads as what it is."""

    subject: str = "[$kind] $device_id: $label (p=$p_defect)"  # defect and low_confidence: a call on a frame
    camera_offline_subject: str = "[camera_offline] $device_id: no frames since $since"
    model_error_subject: str = "[model_error] $device_id: the model failed on $frame_errors frame(s)"
    digest_subject: str = "[$kind] $device_id: $count alerts in $minutes min"


class RelayConfig(Section):
    id: str = "relay1"  # this relay's own topics: <status_prefix>/<id>/available|status|metrics
    status_prefix: str = "defect-relay"
    mqtt: MqttConfig = MqttConfig()
    smtp: SmtpConfig = SmtpConfig()
    routes: list[Route] = [Route()]
    storm: StormConfig = StormConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig = Field(default_factory=StateConfig)  # reads $STATE_DIRECTORY when loaded, not imported
    templates: TemplatesConfig = TemplatesConfig()
    metrics_interval_s: float = Field(default=30.0, ge=1)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not topics.DEVICE_ID.match(v):
            raise ValueError("must be one MQTT topic level of letters, digits, '_', '.', '-'")
        return v

    def secret(self, key: Literal["mqtt", "smtp"]) -> str:
        section = self.mqtt if key == "mqtt" else self.smtp
        return read_secret(section.password_file, f"DEFECT_RELAY_{key.upper()}_PASSWORD", f"{key}_password",
                           section.password)


def parse(data: dict[str, Any], *, check_files: bool = True) -> RelayConfig:
    cfg = validate(RelayConfig, data)
    problems = cfg.mqtt.file_problems() if check_files else []
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load(path: Path) -> RelayConfig:
    return load_file(path, parse)
