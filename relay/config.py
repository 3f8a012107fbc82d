"""``relay.toml``: the central relay's configuration, validated once at start (unknown keys are errors).

Mails are Jinja2 templates (``relay/templates``); a plant overrides any of them by a file of the same name in
``templates.dir``, and every template is rendered once at start, so a broken one stops the relay with its name.

Secrets: the broker password from ``mqtt.password_file`` / ``$DEFECT_RELAY_MQTT_PASSWORD`` / credential
``mqtt_password``; the SMTP password from ``smtp.password_file`` / ``$DEFECT_RELAY_SMTP_PASSWORD`` / credential
``smtp_password``. ``examples/relay.toml`` documents every key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from contract import topics
from contract.settings import (
    BrokerSettings,
    ConfigError,
    Section,
    TimeZone,
    check_prefix,
    check_time_of_day,
    load_file,
    read_secret,
    state_directory,
    validate,
)

__all__ = ["ConfigError", "RelayConfig", "load", "parse"]


class MqttConfig(BrokerSettings):
    edge_prefix: str = topics.DEFAULT_PREFIX  # the units' prefix: alerts come from <edge_prefix>/<device>/alert
    shared_group: str = "defect-relay"  # MQTT v5 shared subscription group: relays in one group split the fleet
    console_prefix: str = "defect-console"  # reviews from the console: <console_prefix>/<console id>/reviewed

    @field_validator("edge_prefix", "console_prefix")
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


def _address(a: str) -> str:
    if "@" not in a or any(c in a for c in "\r\n<>,;\"' "):
        raise ValueError(f"{a!r} is not a plain e-mail address")
    return a


def _apprise_url(url: str) -> str:
    """A URL Apprise can send to (checked at start: a typo must not wait for the first alert to show)."""
    import apprise

    if not apprise.Apprise().add(url):
        raise ValueError(f"{url[:60]!r} is not a notification URL Apprise knows (docs/relay.md lists the schemes)")
    return url


def _hours(window: str) -> str:
    start, sep, end = window.partition("-")
    if not sep:
        raise ValueError(f"{window!r} is not a window as HH:MM-HH:MM")
    check_time_of_day(start)
    check_time_of_day(end)
    if start == end:
        raise ValueError(f"{window!r} is empty; leave hours out for all day")
    return window


class Route(Section):
    """Who hears about what: every matching route's recipients and notification URLs get the alert, within the
    route's hours; an alert nobody reviews in the console within ``escalate_after_min`` goes to ``escalate_to``."""

    devices: list[str] = ["*"]  # glob patterns on the device id, e.g. "line3-*"
    kinds: list[str] = list(topics.ALERT_KINDS)
    recipients: list[str] = []
    notify: list[str] = []  # Apprise URLs: slack://..., msteams://..., tgram://..., ntfys://..., json://host/path
    hours: list[str] = []  # windows in the plant's time, "06:00-14:00", "22:00-06:00"; [] = all day
    escalate_after_min: float = Field(default=0.0, ge=0)  # 0: never
    escalate_to: list[str] = []  # mail recipients of the escalation
    escalate_notify: list[str] = []  # Apprise URLs of the escalation

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        unknown = set(v) - set(topics.ALERT_KINDS)
        if unknown:
            raise ValueError(f"unknown alert kind(s) {sorted(unknown)}; known: {', '.join(topics.ALERT_KINDS)}")
        return v

    @field_validator("recipients", "escalate_to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [_address(a) for a in v]

    @field_validator("notify", "escalate_notify")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [_apprise_url(u) for u in v]

    @field_validator("hours")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        return [_hours(w) for w in v]

    @model_validator(mode="after")
    def _escalation(self) -> Route:
        if self.escalate_after_min and not (self.escalate_to or self.escalate_notify):
            raise ValueError("escalate_after_min needs escalate_to or escalate_notify")
        return self


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


class LinksConfig(Section):
    """Signed one-time links in a defect's mail: "right" / "false alarm" recorded in the console from the mail."""

    key_file: Path | None = None  # the key the console verifies them with (web.mail_link_key_file); None: no links
    valid_h: float = Field(default=24.0, gt=0, le=24 * 14)  # a link works once, within this many hours


class TemplatesConfig(Section):
    dir: Path | None = None  # a plant's templates: a file here replaces the shipped one of its name (docs/relay.md)


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
    links: LinksConfig = LinksConfig()
    metrics_interval_s: float = Field(default=30.0, ge=1)
    console_url: str = ""  # "https://console.plant": mails link to the part's page there (a login is needed)
    time_zone: TimeZone = ""  # the plant's, for times in mails and route hours (an IANA name); "": this machine's
    stations: dict[str, str] = {}  # device id -> the name people know the station by, "line3-a" = "Line 3, press"

    @field_validator("console_url")
    @classmethod
    def _console(cls, v: str) -> str:
        if v and not (v.startswith(("http://", "https://")) and "?" not in v and "#" not in v):
            raise ValueError("must be the console's address, as https://console.plant or http://10.0.0.5:8080")
        return v.rstrip("/")

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
