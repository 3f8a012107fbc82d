"""The configuration pieces every service shares: TOML reading, the one error type, broker and TLS settings, secrets.

Each service (``edge.toml``, ``relay.toml``, ``console.toml``) is a frozen pydantic model built from these sections:
unknown keys are errors (a typo must not silently fall back to a default) and every problem is reported in one
message naming each key. Secrets never need to be in a file: see :func:`read_secret`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract import topics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older units
    import tomli as tomllib


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and every offending key."""


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip hostname verification (never in production)


def check_prefix(v: str) -> str:
    if not topics.PREFIX.match(v):
        raise ValueError("must be topic levels of letters, digits, '_', '.', '-' separated by '/'")
    return v


def check_time_zone(v: str) -> str:
    """The plant's time zone, an IANA name ("Europe/Berlin"); "" stands for the machine's own."""
    if v:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone this machine knows (an IANA name, as Europe/Berlin)") from None
    return v


# A config key holding the plant's time zone.
TimeZone = Annotated[str, AfterValidator(check_time_zone)]


def check_time_of_day(x: str) -> str:
    """``HH:MM``, 00:00 to 23:59."""
    if len(x) != 5 or x[2] != ":" or not (x[:2] + x[3:]).isdigit() or int(x[:2]) > 23 or int(x[3:]) > 59:
        raise ValueError(f"{x!r} is not a time of day as HH:MM")
    return x


class BrokerSettings(Section):
    """How a service reaches the broker; each service's ``[mqtt]`` section extends it with its own keys."""

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = ""  # default: a name derived from the service and its id
    username: str = ""
    password: str = ""  # prefer password_file, the environment or a systemd credential
    password_file: Path | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    tls: TlsSettings | None = None
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff(cls, v: float, info: Any) -> float:
        if v < info.data.get("reconnect_min_s", 0):
            raise ValueError("must not be less than reconnect_min_s")
        return v

    def file_problems(self, key: str = "mqtt") -> list[str]:
        """Files named here that do not exist, as ``key.path: problem`` (checked at start, not at first use)."""
        files: list[tuple[str, Path | None]] = [(f"{key}.password_file", self.password_file)]
        if self.tls:
            files += [(f"{key}.tls.ca_file", self.tls.ca_file), (f"{key}.tls.cert_file", self.tls.cert_file),
                      (f"{key}.tls.key_file", self.tls.key_file)]
        problems = [f"{k}: {p} is not a readable file" for k, p in files if p is not None and not p.is_file()]
        if self.tls and bool(self.tls.cert_file) != bool(self.tls.key_file):
            problems.append(f"{key}.tls: cert_file and key_file go together")
        return problems


def read_secret(file: Path | None, env: str, credential: str, inline: str) -> str:
    """A secret from its file, the environment, a systemd credential (LoadCredential=), or the config, in that order.

    Every service looks its passwords up the same way, so an operator learns one rule.
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

    Each instance of a template unit gets its own directory, and only that one is writable under
    ``ProtectSystem=strict``: a configuration that leaves ``state.dir`` unset lands there.
    """
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given else default


def describe(err: ValidationError) -> str:
    """Every validation error as ``key.path: problem``, in one line."""
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else "required key missing" \
            if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)


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


C = TypeVar("C", bound=BaseModel)


def load_file(path: Path, parse: Callable[[dict[str, Any]], C]) -> C:
    """Read ``path`` and hand it to ``parse``; every :class:`ConfigError` names the file."""
    data = read_toml(path)
    try:
        return parse(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def validate(model: type[C], data: dict[str, Any]) -> C:
    """``data`` as ``model``, or a one-line :class:`ConfigError` naming every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe(e)) from None
