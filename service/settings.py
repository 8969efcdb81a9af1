"""Configuration: one validated object built from the environment (and `.env`) at start-up.

The environment variable names are a public contract: each field upper-cased, explained in full in
`config/example.env` (tests/unit/test_docs.py keeps that file and the README's table in step).
`QueueSettings` is what a producer needs; `WorkerSettings` adds SMTP and worker tuning. Secrets
are `SecretStr`, so neither `repr()` nor a validation error ever shows them.

With `REDIS_URL` set in neither, the Redis is that of the `make run` running in the working
directory (its state file, `var/local/stack.json`), else `DEFAULT_REDIS_URL`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Literal, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .addresses import host_problem
from .connection import check_redis_url
from .errors import ConfigError
from .keys import validate_queue_name
from .local.stack_file import STACK_FILE, running_stack
from .rates import DomainLimit, Rate, parse_domain_limits, parse_rate
from .relay_config import DEFAULT_PORTS, RelayConfig, RelaysFile, is_loopback, load_relays
from .task import EmailAddress

__all__ = [
    "DEFAULT_REDIS_URL",
    "DashboardSettings",
    "QueueSettings",
    "WorkerSettings",
    "is_loopback",
    "load_settings",
    "redact_url",
]

S = TypeVar("S", bound="QueueSettings")
T = TypeVar("T", str, SecretStr, None)

# The Redis every tool shares when nothing is configured. The tests point it at a server of
# their own (TEST_DEFAULT_REDIS_URL), so that no test can reach a Redis that is not theirs.
DEFAULT_REDIS_URL = os.environ.get("TEST_DEFAULT_REDIS_URL", "redis://localhost:6379/0")


def _default_redis_url() -> SecretStr:
    stack = running_stack()
    return SecretStr(stack.redis_url if stack and stack.redis_url else DEFAULT_REDIS_URL)


class QueueSettings(BaseSettings):
    """Where the queue lives: enough for a producer."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,  # "nan" and "inf" parse as floats; no setting means them
    )

    redis_url: SecretStr = Field(default_factory=_default_redis_url)
    email_queue: str = "emails"
    # The per-email budget a producer enforces at enqueue (bodies, and attachments as base64).
    max_email_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    # How long a task's status record outlives its last change (service/status.py); 0: none kept.
    task_status_ttl_seconds: int = Field(default=7 * 86_400, ge=0, le=366 * 86_400)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] | None = None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        # Everything redis-py would refuse late, or misread, refused now; the message never
        # echoes the URL (it may carry a password).
        check_redis_url(value.get_secret_value())
        return value

    @field_validator("email_queue")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        return validate_queue_name(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def local_stack_notice(self) -> str | None:
        """One line for a CLI to print when its Redis is that of `make run` (REDIS_URL unset)."""
        stack = running_stack()
        url = self.redis_url.get_secret_value()
        if "redis_url" in self.model_fields_set or stack is None or stack.redis_url != url:
            return None
        return f"using the Redis of make run (pid {stack.pid}, {STACK_FILE}): {redact_url(url)}"

    @property
    def task_status_ttl(self) -> timedelta:
        """TASK_STATUS_TTL_SECONDS as a duration."""
        return timedelta(seconds=self.task_status_ttl_seconds)

    @property
    def json_logs(self) -> bool:
        """Whether log lines are JSON objects (else coloured console lines)."""
        if self.log_format is None:
            return not sys.stdout.isatty()
        return self.log_format == "json"


class WorkerSettings(QueueSettings):
    """Everything the worker needs; built once in `python -m service.worker` and passed down."""

    smtp_host: str = "localhost"
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    smtp_max_messages_per_connection: int = Field(default=0, ge=0, le=1_000_000)
    mail_from: EmailAddress
    worker_concurrency: int = Field(default=100, ge=1, le=500)
    worker_reclaim_idle_seconds: float = Field(default=60.0, gt=0, le=86_400)
    worker_shutdown_seconds: float = Field(default=25.0, ge=0, le=3_600)
    worker_max_attempts: int = Field(default=25, ge=1, le=1_000)
    worker_retry_base_seconds: float = Field(default=60.0, gt=0, le=86_400)
    worker_retry_max_seconds: float = Field(default=3_600.0, gt=0, le=7 * 86_400)
    worker_event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    worker_heartbeat_seconds: float = Field(default=10.0, ge=0.1, le=300)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a scrape target must be reachable by Prometheus
    # None: a fresh unique name per process (see config/example.env for when to set one).
    worker_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")
    # Provider limits, shared by every worker of the queue (service/store/limiter.py).
    smtp_rate_limit: str | None = None  # e.g. 14/s, 600/min; None: no rate limit
    smtp_rate_burst: int = Field(default=1, ge=1, le=10_000)
    smtp_rate_cost: Literal["message", "recipient"] = "message"
    smtp_daily_quota: int | None = Field(default=None, ge=1, le=1_000_000_000)
    smtp_daily_quota_window_seconds: float = Field(default=86_400.0, ge=1, le=7 * 86_400)
    # Several relays (service/relay_config.py); None: the one relay of the SMTP_* settings.
    smtp_relays_file: Path | None = None
    _relays_file: RelaysFile | None = PrivateAttr(default=None)
    # e.g. gmail.com=20/min,yahoo.com=5/s (service/store/domains.py); None: no domain limits
    smtp_domain_limits: str | None = None

    @field_validator("smtp_host", "metrics_host")
    @classmethod
    def _check_host(cls, value: str, info: ValidationInfo) -> str:
        # Else a blank or malformed host would only fail at each connect (SMTP: paused forever).
        port_setting = "SMTP_PORT" if info.field_name == "smtp_host" else "METRICS_PORT"
        if problem := host_problem(value, port_setting=port_setting):
            raise ValueError(problem)
        return value

    @field_validator("smtp_username", "smtp_password")
    @classmethod
    def _check_not_blank(cls, value: T) -> T:
        # Empty credentials would be sent as AUTH (or fail as AUTH unsupported) at every send.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and not text.strip():
            raise ValueError("is empty: set SMTP_USERNAME and SMTP_PASSWORD, or neither")
        return value

    @field_validator("smtp_security", "smtp_rate_cost", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("smtp_rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # SMTP_RATE_LIMIT= (empty) means no limit, as unset does
        parse_rate(value)
        return value

    @field_validator("smtp_relays_file", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("smtp_domain_limits")
    @classmethod
    def _check_domain_limits(cls, value: str | None) -> str | None:
        if value is None or not parse_domain_limits(value):
            return None
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.smtp_relays_file is not None:
            self._relays_file = self._load_relays_file(self.smtp_relays_file)
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ConfigError("SMTP_USERNAME", "SMTP_USERNAME and SMTP_PASSWORD go together")
        if self.smtp_username and self.smtp_security == "none" and not is_loopback(self.smtp_host):
            raise ConfigError(
                "SMTP_SECURITY",
                f"'none' would send SMTP credentials in clear text to {self.smtp_host}; "
                "use starttls or tls",
            )
        if self.worker_event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError("WORKER_EVENT_LOOP", "uvloop is not installed; use auto or asyncio")
        if self.worker_retry_base_seconds > self.worker_retry_max_seconds:
            raise ConfigError(
                "WORKER_RETRY_BASE_SECONDS",
                f"must not exceed WORKER_RETRY_MAX_SECONDS ({self.worker_retry_max_seconds:g})",
            )
        if self.worker_reclaim_idle_seconds <= self.smtp_timeout_seconds:
            # Otherwise a slow but healthy send could be taken over and sent twice.
            raise ConfigError(
                "WORKER_RECLAIM_IDLE_SECONDS",
                f"must be greater than SMTP_TIMEOUT_SECONDS ({self.smtp_timeout_seconds:g})",
            )
        return self

    def _load_relays_file(self, path: Path) -> RelaysFile:
        # One place describes the relays: SMTP_* beside the file would be silently ignored.
        mixed = [
            name
            for name in ("smtp_host", "smtp_port", "smtp_username", "smtp_password")
            if name in self.model_fields_set
        ]
        if mixed:
            raise ConfigError(
                mixed[0].upper(),
                "is set together with SMTP_RELAYS_FILE: describe every relay in the file",
            )
        return load_relays(path)

    @property
    def relays(self) -> tuple[RelayConfig, ...]:
        """The relays in order of preference: the file's, or the one of the SMTP_* settings."""
        if self._relays_file is not None:
            return self._relays_file.relay
        single = RelayConfig(
            name="smtp",
            host=self.smtp_host,
            port=self.smtp_port,
            security=self.smtp_security,
            username=self.smtp_username,
            password=self.smtp_password,
        )
        return (single,)

    @property
    def relay_mode(self) -> str:
        """How the relays share the mail: failover (also with one relay) or weighted."""
        return "failover" if self._relays_file is None else self._relays_file.mode

    @property
    def rate_limit(self) -> Rate | None:
        """`SMTP_RATE_LIMIT`, parsed; None when unset."""
        return parse_rate(self.smtp_rate_limit) if self.smtp_rate_limit else None

    @property
    def domain_limits(self) -> tuple[DomainLimit, ...]:
        """`SMTP_DOMAIN_LIMITS`, parsed; empty when unset."""
        return parse_domain_limits(self.smtp_domain_limits or "")

    @property
    def smtp_port_or_default(self) -> int:
        """`SMTP_PORT`, or the standard port of `SMTP_SECURITY` (25, 587 or 465)."""
        return self.smtp_port or DEFAULT_PORTS[self.smtp_security]


class DashboardSettings(QueueSettings):
    """The web dashboard's (`python -m service.dashboard`): where it listens, who may use it."""

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8025, ge=1, le=65535)
    # Bearer token, or the password of Basic auth (any user name); required off loopback.
    dashboard_token: SecretStr | None = None
    dashboard_read_only: bool = False

    @field_validator("dashboard_host")
    @classmethod
    def _check_dashboard_host(cls, value: str) -> str:
        if problem := host_problem(value, port_setting="DASHBOARD_PORT"):
            raise ValueError(problem)
        return value

    @field_validator("dashboard_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # DASHBOARD_TOKEN= (empty) means none, as unset does
        if len(value.get_secret_value()) < 16:
            raise ValueError("is too short: use at least 16 characters (32 random ones, ideally)")
        return value

    @model_validator(mode="after")
    def _check_exposure(self) -> Self:
        if self.dashboard_token is None and not is_loopback(self.dashboard_host):
            raise ConfigError(
                "DASHBOARD_TOKEN",
                f"is required to listen on {self.dashboard_host}, which is not loopback",
            )
        return self


def redact_url(url: str) -> str:
    """`url` without its password or query (redis-py also takes `?password=`), safe to log."""
    parts = urlsplit(url)
    credentials = (parts.username or "") + (":***" if parts.password is not None else "")
    netloc = (f"{credentials}@" if credentials else "") + parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def load_settings(cls: type[S]) -> S:
    """Build `cls` from the environment; raise `ConfigError` naming the first bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        raise _config_error(exc) from None
    except UnicodeDecodeError as exc:  # only .env is decoded: the environment is already text
        raise ConfigError(".env", f"is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:  # .env exists but cannot be read
        raise ConfigError(".env", f"cannot be read: {exc.strerror}") from None


def _config_error(exc: ValidationError) -> ConfigError:
    error = exc.errors(include_url=False, include_input=False)[0]
    variable = str(error["loc"][0]).upper() if error["loc"] else ""
    context = error.get("ctx", {}).get("error")
    if isinstance(context, ConfigError):
        return context
    reason = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        reason = "is required but not set"
    return ConfigError(variable or "settings", reason)
