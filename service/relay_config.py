"""Several SMTP relays: the TOML file `SMTP_RELAYS_FILE` names, read and checked at start-up.

Without the file the worker has one relay, the `SMTP_*` settings. With it, the file lists the
relays (`config/relays.example.toml`): each has a name (what logs, metrics and dead letters
show; never its credentials), a host, port, security, credentials, a weight, how many
connections it may have, optionally the sender domains it accepts, and optionally its own
limits (`rate_limit`, `rate_burst`, `daily_quota`, `daily_quota_window_seconds`: the syntax
and checks of `SMTP_RATE_LIMIT` and friends) and whether a send that finds it at its limit may
go to the next relay (`overflow`; else it waits for the relay's slot). `mode` says how they
share the mail: `failover` (the first usable relay in file order carries everything) or
`weighted` (each email picks a usable relay by weight). Either way a relay that cannot open a
session is skipped until it can again (`service/worker/relays.py`).

Any mistake in the file stops the start-up with one line naming the field, e.g.
`SMTP_RELAYS_FILE: relay[2].port: must be at most 65535`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .addresses import host_problem
from .errors import ConfigError
from .rates import Rate, parse_rate

__all__ = ["DEFAULT_PORTS", "RelayConfig", "RelaysFile", "load_relays"]

DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
_MAX_RELAYS = 16
_SETTING = "SMTP_RELAYS_FILE"

Domain = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z0-9.-]{1,253}$")
]


class RelayConfig(BaseModel):
    """One SMTP relay. `from_domains` empty: it takes any sender."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    # The name of an environment variable holding the password, to keep it out of the file.
    password_env: str | None = None
    weight: int = Field(default=1, ge=1, le=1000)
    # None: WORKER_CONCURRENCY. Many providers cap the connections of one account.
    max_connections: int | None = Field(default=None, ge=1, le=500)
    from_domains: tuple[Domain, ...] = ()
    # This relay's own limits, shared by every worker (store/limiter.py, keyed per relay); the
    # queue's SMTP_RATE_LIMIT and SMTP_DAILY_QUOTA apply as well.
    rate_limit: str | None = None  # e.g. 14/s, 600/min
    rate_burst: int = Field(default=1, ge=1, le=10_000)
    daily_quota: int | None = Field(default=None, ge=1, le=1_000_000_000)
    daily_quota_window_seconds: float = Field(default=86_400.0, ge=1, le=7 * 86_400)
    # At its limit, a send may go to the next relay in order (True) or waits for a slot here.
    overflow: bool = False

    @model_validator(mode="before")
    @classmethod
    def _password_from_environment(cls, data: object) -> object:
        # Read once, while the settings are built at start-up, like every other setting.
        if not isinstance(data, dict) or "password_env" not in data:
            return data
        if "password" in data:
            raise ValueError("password and password_env: set one of them")
        variable = data["password_env"]
        value = os.environ.get(variable) if isinstance(variable, str) else None
        if value is None:
            raise ValueError(f"password_env: {variable} is not set")
        return {**data, "password": value}

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if problem := host_problem(value, port_setting="port"):
            raise ValueError(problem)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # empty: no limit, as with SMTP_RATE_LIMIT
        parse_rate(value)
        return value

    @field_validator("password")
    @classmethod
    def _check_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username and self.security == "none" and not is_loopback(self.host):
            raise ValueError(
                f"security 'none' would send credentials in clear text to {self.host}; "
                "use starttls or tls"
            )
        return self

    @property
    def rate(self) -> Rate | None:
        """`rate_limit`, parsed; None when unset."""
        return parse_rate(self.rate_limit) if self.rate_limit else None

    @property
    def limited(self) -> bool:
        """Whether the relay has limits of its own."""
        return self.rate_limit is not None or self.daily_quota is not None

    @property
    def port_or_default(self) -> int:
        """`port`, or the standard port of `security` (25, 587 or 465)."""
        return self.port or DEFAULT_PORTS[self.security]

    @property
    def address(self) -> str:
        """host:port, for logs."""
        return f"{self.host}:{self.port_or_default}"


class RelaysFile(BaseModel):
    """The whole file: how the relays share the mail, and the relays in order of preference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["failover", "weighted"] = "failover"
    relay: tuple[RelayConfig, ...] = Field(min_length=1, max_length=_MAX_RELAYS)

    @model_validator(mode="after")
    def _check_names(self) -> Self:
        names = [relay.name for relay in self.relay]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"relay[{index + 1}].name: {name!r} is used twice")
        return self


def load_relays(path: Path) -> RelaysFile:
    """Read and check `path`; raise `ConfigError` (naming `SMTP_RELAYS_FILE` and the field).

    No message quotes a value from the file: it holds passwords.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(_SETTING, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(_SETTING, f"{path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_SETTING, f"{path} is not valid TOML: {exc}") from None
    try:
        return RelaysFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_SETTING, field_problem(exc)) from None


def field_problem(exc: ValidationError) -> str:
    """The first error as `relay[N].field: reason` (N counted from 1, as a reader counts)."""
    error = exc.errors(include_url=False, include_input=False)[0]
    parts: list[str] = []
    for part in error["loc"]:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part + 1}]"
        else:
            parts.append(str(part))
    reason = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        reason = "is required but not set"
    elif error["type"] == "extra_forbidden":
        reason = "is not a known field"
    where = ".".join(parts)
    return f"{where}: {reason}" if where else reason


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (credentials may then travel without TLS)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
