"""Settings: every bad value fails naming its variable, and no secret is ever shown."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.local.stack_file import STACK_FILE, LocalStack, StackFile, running_stack
from service.settings import (
    DEFAULT_REDIS_URL,
    QueueSettings,
    WorkerSettings,
    is_loopback,
    load_settings,
    redact_url,
)

_ALL = tuple(name.upper() for name in WorkerSettings.model_fields)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in _ALL:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))  # no .env from the checkout
    monkeypatch.setenv("MAIL_FROM", "noreply@example.com")


@pytest.mark.parametrize(
    ("env", "variable", "reason"),
    [
        ({"MAIL_FROM": ""}, "MAIL_FROM", "not a single email address"),
        ({"REDIS_URL": "http://h:1"}, "REDIS_URL", "must start with redis://"),
        ({"REDIS_URL": "redis://:pw@h:99999"}, "REDIS_URL", "invalid port"),
        ({"REDIS_URL": "redis://"}, "REDIS_URL", "has no host"),
        ({"EMAIL_QUEUE": "a{b}"}, "EMAIL_QUEUE", "not a valid queue name"),
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT", "valid integer"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT", "less than or equal to 65535"),
        ({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY", "'none', 'starttls' or 'tls'"),
        ({"SMTP_USERNAME": "u"}, "SMTP_USERNAME", "go together"),
        (
            {
                "SMTP_USERNAME": "u",
                "SMTP_PASSWORD": "p",
                "SMTP_SECURITY": "none",
                "SMTP_HOST": "smtp.example.com",
            },
            "SMTP_SECURITY",
            "clear text",
        ),
        ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY", "greater than or equal to 1"),
        ({"WORKER_RECLAIM_IDLE_SECONDS": "20"}, "WORKER_RECLAIM_IDLE_SECONDS", "greater than"),
        ({"WORKER_SHUTDOWN_SECONDS": "-1"}, "WORKER_SHUTDOWN_SECONDS", "greater than or equal"),
        ({"WORKER_MAX_ATTEMPTS": "many"}, "WORKER_MAX_ATTEMPTS", "valid integer"),
        ({"WORKER_NAME": "a b"}, "WORKER_NAME", "should match pattern"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "'json' or 'console'"),
        ({"SMTP_RATE_LIMIT": "14"}, "SMTP_RATE_LIMIT", "is not a rate"),
        ({"SMTP_RATE_LIMIT": "14/week"}, "SMTP_RATE_LIMIT", "is not a rate"),
        ({"SMTP_RATE_LIMIT": "0/s"}, "SMTP_RATE_LIMIT", "outside"),
        ({"SMTP_RATE_BURST": "0"}, "SMTP_RATE_BURST", "greater than or equal to 1"),
        ({"SMTP_RATE_COST": "mail"}, "SMTP_RATE_COST", "'message' or 'recipient'"),
        ({"SMTP_DAILY_QUOTA": "0"}, "SMTP_DAILY_QUOTA", "greater than or equal to 1"),
        ({"SMTP_DAILY_QUOTA": "lots"}, "SMTP_DAILY_QUOTA", "valid integer"),
        ({"SMTP_DOMAIN_LIMITS": "gmail.com"}, "SMTP_DOMAIN_LIMITS", "is not domain=rate"),
        ({"SMTP_DOMAIN_LIMITS": "gmail.com:2/s"}, "SMTP_DOMAIN_LIMITS", "is not domain=rate"),
        ({"SMTP_DOMAIN_LIMITS": "@gmail.com=2/s"}, "SMTP_DOMAIN_LIMITS", "is not domain=rate"),
        ({"SMTP_DOMAIN_LIMITS": "gmail..com=2/s"}, "SMTP_DOMAIN_LIMITS", "is not domain=rate"),
        ({"SMTP_DOMAIN_LIMITS": "gmail.com=2"}, "SMTP_DOMAIN_LIMITS", "gmail.com: '2' is not a"),
        ({"SMTP_DOMAIN_LIMITS": "gmail.com=0/s"}, "SMTP_DOMAIN_LIMITS", "outside"),
        (
            {"SMTP_DOMAIN_LIMITS": "gmail.com=2/s,GMAIL.com=1/s"},
            "SMTP_DOMAIN_LIMITS",
            "gmail.com is limited twice",
        ),
        (
            {"SMTP_DAILY_QUOTA_WINDOW_SECONDS": "0"},
            "SMTP_DAILY_QUOTA_WINDOW_SECONDS",
            "greater than or equal to 1",
        ),
        # Every variable: empty, blank, wrong type, out of range, nonsense (config/example.env).
        ({"REDIS_URL": ""}, "REDIS_URL", "must start with redis://"),
        ({"REDIS_URL": "redis://h/abc"}, "REDIS_URL", "database (the path after the host)"),
        ({"REDIS_URL": "redis://h/0?socket_timeout=abc"}, "REDIS_URL", "socket_timeout"),
        ({"REDIS_URL": "redis://h/0?ssl_cert_reqs=none"}, "REDIS_URL", "only to rediss://"),
        ({"REDIS_URL": "unix://"}, "REDIS_URL", "needs a socket path"),
        ({"EMAIL_QUEUE": ""}, "EMAIL_QUEUE", "not a valid queue name"),
        ({"EMAIL_QUEUE": " "}, "EMAIL_QUEUE", "not a valid queue name"),
        ({"SMTP_HOST": ""}, "SMTP_HOST", "is empty"),
        ({"SMTP_HOST": "  "}, "SMTP_HOST", "is empty"),
        ({"SMTP_HOST": "smtp.example.com:587"}, "SMTP_HOST", "(set SMTP_PORT)"),
        ({"SMTP_HOST": "smtp://smtp.example.com"}, "SMTP_HOST", "not a URL"),
        ({"SMTP_HOST": "smtp example.com"}, "SMTP_HOST", "contains a space"),
        ({"SMTP_PORT": ""}, "SMTP_PORT", "valid integer"),
        ({"SMTP_PORT": "0"}, "SMTP_PORT", "greater than or equal to 1"),
        ({"SMTP_USERNAME": "", "SMTP_PASSWORD": ""}, "SMTP_USERNAME", "is empty"),
        ({"SMTP_USERNAME": "u", "SMTP_PASSWORD": "  "}, "SMTP_PASSWORD", "is empty"),
        ({"SMTP_SECURITY": ""}, "SMTP_SECURITY", "'none', 'starttls' or 'tls'"),
        ({"SMTP_TIMEOUT_SECONDS": ""}, "SMTP_TIMEOUT_SECONDS", "valid number"),
        ({"SMTP_TIMEOUT_SECONDS": "nan"}, "SMTP_TIMEOUT_SECONDS", "finite number"),
        ({"SMTP_TIMEOUT_SECONDS": "0"}, "SMTP_TIMEOUT_SECONDS", "greater than 0"),
        (
            {"SMTP_MAX_MESSAGES_PER_CONNECTION": "-1"},
            "SMTP_MAX_MESSAGES_PER_CONNECTION",
            "greater than or equal to 0",
        ),
        ({"MAIL_FROM": " "}, "MAIL_FROM", "not a single email address"),
        ({"WORKER_CONCURRENCY": "501"}, "WORKER_CONCURRENCY", "less than or equal to 500"),
        ({"WORKER_RECLAIM_IDLE_SECONDS": "inf"}, "WORKER_RECLAIM_IDLE_SECONDS", "finite number"),
        ({"WORKER_SHUTDOWN_SECONDS": "nan"}, "WORKER_SHUTDOWN_SECONDS", "finite number"),
        ({"WORKER_MAX_ATTEMPTS": "0"}, "WORKER_MAX_ATTEMPTS", "greater than or equal to 1"),
        ({"WORKER_RETRY_BASE_SECONDS": "nan"}, "WORKER_RETRY_BASE_SECONDS", "finite number"),
        ({"WORKER_RETRY_MAX_SECONDS": "-inf"}, "WORKER_RETRY_MAX_SECONDS", "finite number"),
        (
            {"WORKER_RETRY_BASE_SECONDS": "120", "WORKER_RETRY_MAX_SECONDS": "60"},
            "WORKER_RETRY_BASE_SECONDS",
            "must not exceed WORKER_RETRY_MAX_SECONDS",
        ),
        ({"WORKER_NAME": ""}, "WORKER_NAME", "should match pattern"),
        ({"WORKER_EVENT_LOOP": "trio"}, "WORKER_EVENT_LOOP", "'auto', 'uvloop' or 'asyncio'"),
        ({"WORKER_HEARTBEAT_SECONDS": "0"}, "WORKER_HEARTBEAT_SECONDS", "greater than or equal"),
        ({"METRICS_PORT": ""}, "METRICS_PORT", "valid integer"),
        ({"METRICS_PORT": "65536"}, "METRICS_PORT", "less than or equal to 65535"),
        ({"METRICS_HOST": ""}, "METRICS_HOST", "is empty"),
        ({"METRICS_HOST": "0.0.0.0:9108"}, "METRICS_HOST", "(set METRICS_PORT)"),
        ({"METRICS_HOST": "[::]"}, "METRICS_HOST", "without brackets"),
        ({"LOG_LEVEL": ""}, "LOG_LEVEL", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ({"LOG_FORMAT": ""}, "LOG_FORMAT", "'json' or 'console'"),
        ({"TASK_STATUS_TTL_SECONDS": ""}, "TASK_STATUS_TTL_SECONDS", "valid integer"),
        ({"TASK_STATUS_TTL_SECONDS": "1.5"}, "TASK_STATUS_TTL_SECONDS", "valid integer"),
        ({"TASK_STATUS_TTL_SECONDS": "-1"}, "TASK_STATUS_TTL_SECONDS", "greater than or equal"),
        (
            {"TASK_STATUS_TTL_SECONDS": "31622401"},  # 366 days and a second
            "TASK_STATUS_TTL_SECONDS",
            "less than or equal to 31622400",
        ),
    ],
)
def test_bad_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, reason: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(WorkerSettings)
    assert caught.value.variable == variable
    assert reason in caught.value.reason


def test_a_dotenv_that_is_not_utf8_names_the_file() -> None:
    Path(".env").write_bytes(b"MAIL_FROM=a@example.com\nSMTP_HOST=\xff\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(WorkerSettings)
    assert (caught.value.variable, caught.value.reason) == (".env", "is not UTF-8 text (byte 34)")


def test_missing_mail_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAIL_FROM")
    with pytest.raises(ConfigError, match="MAIL_FROM: is required"):
        load_settings(WorkerSettings)


def test_defaults_and_derived_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(WorkerSettings)
    assert (settings.smtp_security, settings.smtp_port_or_default) == ("starttls", 587)
    assert settings.email_queue == "emails"
    monkeypatch.setenv("SMTP_SECURITY", "TLS")
    assert load_settings(WorkerSettings).smtp_port_or_default == 465


def test_credentials_allowed_in_clear_only_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USERNAME", "u")
    monkeypatch.setenv("SMTP_PASSWORD", "p")
    monkeypatch.setenv("SMTP_SECURITY", "none")
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    assert load_settings(WorkerSettings).smtp_username == "u"


def test_secrets_never_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://user:hunter2-redis@redis.example.com:6379")
    monkeypatch.setenv("SMTP_USERNAME", "u")
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2-smtp")
    settings = load_settings(WorkerSettings)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2-redis@redis.example.com:6379")
    with pytest.raises(ConfigError) as caught:
        load_settings(WorkerSettings)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("rediss://user:pw@host:6379", "rediss://user:***@host:6379"),
        ("redis://:pw@host:6379/2", "redis://:***@host:6379/2"),
        ("redis://user@host:6379", "redis://user@host:6379"),
        ("rediss://host:6379/0?password=pw&ssl_cert_reqs=none", "rediss://host:6379/0"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
     ("[::1]", True), ("smtp.example.com", False), ("10.0.0.1", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


_STACK = LocalStack(
    pid=os.getpid(), redis_url="redis://127.0.0.1:7/0", smtp="127.0.0.1:8", mail_dir="/m"
)


def test_redis_url_unset_is_that_of_the_make_run_running_here() -> None:
    stack_file = StackFile()
    assert stack_file.claim()
    stack_file.publish(_STACK)
    try:
        settings = load_settings(QueueSettings)
        assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:7/0"
        assert settings.local_stack_notice() == (
            f"using the Redis of make run (pid {os.getpid()}, var/local/stack.json): "
            "redis://127.0.0.1:7/0"
        )
    finally:
        stack_file.release()
    assert not STACK_FILE.exists()
    settings = load_settings(QueueSettings)
    assert settings.redis_url.get_secret_value() == DEFAULT_REDIS_URL
    assert settings.local_stack_notice() is None


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_redis_url_configured_wins_over_make_run(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "environment":
        monkeypatch.setenv("REDIS_URL", "redis://configured:1/0")
    else:
        Path(".env").write_text("REDIS_URL=redis://configured:1/0\n")
    stack_file = StackFile()
    assert stack_file.claim()
    stack_file.publish(_STACK)
    try:
        settings = load_settings(QueueSettings)
        assert settings.redis_url.get_secret_value() == "redis://configured:1/0"
        assert settings.local_stack_notice() is None
    finally:
        stack_file.release()


@pytest.mark.parametrize("lock_file", [False, True])
def test_a_state_file_left_by_a_killed_make_run_is_ignored(lock_file: bool) -> None:
    # A killed stack leaves its file; its lock went with its process (pids are reused).
    STACK_FILE.parent.mkdir(parents=True)
    STACK_FILE.write_text('{"pid": 1, "redis_url": "redis://127.0.0.1:7/0"}')
    if lock_file:
        STACK_FILE.with_suffix(".lock").touch()
    assert running_stack() is None
    assert load_settings(QueueSettings).redis_url.get_secret_value() == DEFAULT_REDIS_URL
    stack_file = StackFile()
    assert stack_file.claim()  # and the next make run starts
    stack_file.release()


def test_a_second_claim_is_refused_while_the_first_holds_the_file() -> None:
    first, second = StackFile(), StackFile()
    assert first.claim()
    assert running_stack() == LocalStack(pid=os.getpid())  # starting: no Redis yet
    assert load_settings(QueueSettings).redis_url.get_secret_value() == DEFAULT_REDIS_URL
    first.publish(_STACK)
    assert not second.claim()
    assert running_stack() == _STACK
    first.release()
    assert second.claim()
    second.release()


@pytest.mark.parametrize(
    ("env", "per_second", "burst", "cost", "quota"),
    [
        ({}, None, 1, "message", None),
        ({"SMTP_RATE_LIMIT": ""}, None, 1, "message", None),
        ({"SMTP_RATE_LIMIT": "14/s", "SMTP_RATE_COST": "Recipient"}, 14.0, 1, "recipient", None),
        ({"SMTP_RATE_LIMIT": "600/min", "SMTP_RATE_BURST": "5"}, 10.0, 5, "message", None),
        ({"SMTP_DAILY_QUOTA": "50000"}, None, 1, "message", 50_000),
    ],
)
def test_provider_limits(
    monkeypatch: pytest.MonkeyPatch,
    *,
    env: dict[str, str],
    per_second: float | None,
    burst: int,
    cost: str,
    quota: int | None,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(WorkerSettings)
    rate = settings.rate_limit
    assert (rate.per_second if rate else None) == per_second
    assert (settings.smtp_rate_burst, settings.smtp_rate_cost) == (burst, cost)
    assert settings.smtp_daily_quota == quota


@pytest.mark.parametrize(
    ("value", "limits"),
    [
        (None, []),
        ("", []),
        (" , ", []),
        ("gmail.com=20/min", [("gmail.com", 20 / 60)]),
        (" Yahoo.COM = 5/s , gmail.com=20/min,", [("yahoo.com", 5.0), ("gmail.com", 20 / 60)]),
        ("xn--bcher-kva.example=1/h", [("xn--bcher-kva.example", 1 / 3600)]),
    ],
)
def test_domain_limits(
    monkeypatch: pytest.MonkeyPatch, value: str | None, limits: list[tuple[str, float]]
) -> None:
    if value is not None:
        monkeypatch.setenv("SMTP_DOMAIN_LIMITS", value)
    settings = load_settings(WorkerSettings)
    assert [(d.domain, d.rate.per_second) for d in settings.domain_limits] == limits


@pytest.mark.parametrize(
    ("value", "ttl"),
    [(None, timedelta(days=7)), ("0", timedelta(0)), ("60", timedelta(minutes=1))],
)
def test_task_status_ttl(
    monkeypatch: pytest.MonkeyPatch, value: str | None, ttl: timedelta
) -> None:
    if value is not None:
        monkeypatch.setenv("TASK_STATUS_TTL_SECONDS", value)
    assert load_settings(WorkerSettings).task_status_ttl == ttl
