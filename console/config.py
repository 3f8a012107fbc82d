"""``console.toml``: the console's configuration, validated once at start (unknown keys are errors).

Secrets: the broker password from ``mqtt.password_file`` / ``$DEFECT_CONSOLE_MQTT_PASSWORD`` / credential
``mqtt_password``; the database URL's password likewise (``database.password_file`` / ``$DEFECT_CONSOLE_DB_PASSWORD``
/ credential ``db_password``); the key that signs session cookies from ``web.secret_key_file`` (made on first start,
mode 600, when it does not exist). ``examples/console.toml`` documents every key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

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

__all__ = ["ConfigError", "ConsoleConfig", "load", "parse"]


class MqttConfig(BrokerSettings):
    edge_prefix: str = topics.DEFAULT_PREFIX  # the units' prefix: <edge_prefix>/<device>/...
    shared_group: str = "defect-console"  # MQTT v5 shared subscription: consoles in one group split the fleet
    session_expiry_s: int = Field(default=86400, ge=0)  # how long the broker keeps our messages while we are away
    console_prefix: str = topics.CONSOLE_PREFIX  # reviews go out on <console_prefix>/<id>/reviewed (the relay's cue)

    @field_validator("edge_prefix", "console_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_prefix(v)


class DatabaseConfig(Section):
    url: str = ""  # default: SQLite at <state.dir>/console.db; e.g. postgresql+psycopg://console@db.plant/console
    password_file: Path | None = None  # the PostgreSQL password, kept out of the URL
    batch_max: int = Field(default=500, ge=1, le=10_000)  # messages written in one transaction at most
    batch_wait_ms: int = Field(default=200, ge=1, le=10_000)  # how long a write waits to gather a batch


class WebConfig(Section):
    host: str = "127.0.0.1"  # behind a reverse proxy; 0.0.0.0 to serve the plant network directly
    port: int = Field(default=8080, ge=1, le=65535)
    secret_key_file: Path | None = None  # default: <state.dir>/secret_key, made on first start
    session_max_age_s: int = Field(default=8 * 3600, ge=60)  # a session ends this long after login
    tls_cert_file: Path | None = None  # serve HTTPS directly (else put a reverse proxy in front: docs/console.md)
    tls_key_file: Path | None = None
    login_attempts_per_minute: int = Field(default=5, ge=1)  # per (user name, address); four times that per address
    max_upload_mb: float = Field(default=20.0, gt=0)
    shift_starts: list[str] = ["06:00", "14:00", "22:00"]  # the plant's time; the reports' shifts
    # the relay's links.key_file: a defect's mail may then carry one-time "right" / "false alarm" links
    mail_link_key_file: Path | None = None
    time_zone: TimeZone = ""  # the plant's (an IANA name, "Europe/Berlin"); "": the console machine's own

    @field_validator("shift_starts")
    @classmethod
    def _shifts(cls, v: list[str]) -> list[str]:
        for x in v:
            check_time_of_day(x)
            if int(x[3:]) % 15:
                raise ValueError(f"{x!r}: shifts start on the hour or a quarter past, half past or a quarter to")
        if not v:
            raise ValueError("give at least one shift start")
        return v


class RetentionConfig(Section):
    results_days: float = Field(default=7.0, gt=0)  # raw results; per-minute aggregates are kept far longer
    aggregates_days: float = Field(default=730.0, gt=0)  # per-minute frame counts, quarter-hour part counts
    parts_days: float = Field(default=90.0, gt=0)  # each part's verdict and its message
    alerts_days: float = Field(default=365.0, gt=0)
    images_days: float = Field(default=90.0, gt=0)  # snapshots and heatmaps, also bounded by images_max_mb
    images_max_mb: float = Field(default=2048.0, gt=0)  # reviewed images go last


class LimitsConfig(Section):
    max_image_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # a larger "snapshot" is counted and dropped
    max_json_bytes: int = Field(default=64 * 1024, ge=1024)


class StateConfig(Section):
    dir: Path = Field(default_factory=lambda: state_directory(Path("/var/lib/defect-console")))


class ConsoleConfig(Section):
    id: str = "console1"  # this instance's name (its MQTT client id is defect-console-<id>)
    mqtt: MqttConfig = MqttConfig()
    database: DatabaseConfig = DatabaseConfig()
    web: WebConfig = WebConfig()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig = Field(default_factory=StateConfig)
    models_dir: Path | None = None  # the console's model store (for inspect and heatmaps): .tflite + manifest + .h5
    releases_dir: Path | None = None  # a TUF repository (defect-convert release) served read-only at /releases/

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not topics.DEVICE_ID.match(v):
            raise ValueError("must be one MQTT topic level of letters, digits, '_', '.', '-'")
        return v

    def mqtt_password(self) -> str:
        m = self.mqtt
        return read_secret(m.password_file, "DEFECT_CONSOLE_MQTT_PASSWORD", "mqtt_password", m.password)

    def database_url(self) -> str:
        """The SQLAlchemy URL, with the password from its file or the environment when one is given."""
        if not self.database.url:
            return f"sqlite:///{self.state.dir / 'console.db'}"
        password = read_secret(self.database.password_file, "DEFECT_CONSOLE_DB_PASSWORD", "db_password", "")
        if not password:
            return self.database.url
        from sqlalchemy.engine import make_url

        return make_url(self.database.url).set(password=password).render_as_string(hide_password=False)

    def secret_key(self) -> bytes:
        """The key that signs session cookies; made (random, mode 600) on first start when its file is absent."""
        path = self.web.secret_key_file or self.state.dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    @property
    def images_dir(self) -> Path:
        return self.state.dir / "images"


def parse(data: dict[str, Any], *, check_files: bool = True) -> ConsoleConfig:
    cfg = validate(ConsoleConfig, data)
    problems = cfg.mqtt.file_problems() if check_files else []
    w = cfg.web
    if bool(w.tls_cert_file) != bool(w.tls_key_file):
        problems.append("web: tls_cert_file and tls_key_file go together")
    if check_files:
        problems += [f"web.{k}: {p} is not a readable file" for k, p in
                     (("tls_cert_file", w.tls_cert_file), ("tls_key_file", w.tls_key_file)) if p and not p.is_file()]
        if cfg.models_dir is not None and not cfg.models_dir.is_dir():
            problems.append(f"models_dir: {cfg.models_dir} is not a folder")
        if cfg.releases_dir is not None and not (cfg.releases_dir / "metadata" / "root.json").is_file():
            problems.append(f"releases_dir: {cfg.releases_dir} is not a release repository (no metadata/root.json; "
                            "make one with defect-convert release init)")
    if cfg.database.url and not cfg.database.url.startswith(("sqlite", "postgresql")):
        problems.append("database.url: must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load(path: Path, *, check_files: bool = True) -> ConsoleConfig:
    return load_file(path, lambda data: parse(data, check_files=check_files))


