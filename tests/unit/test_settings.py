"""Settings: every bad value fails naming its variable, and no secret is ever shown."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from service.settings import WorkerSettings, is_loopback, load_settings, redact_url

_ALL = (
    "REDIS_URL", "EMAIL_QUEUE", "LOG_LEVEL", "LOG_FORMAT", "SMTP_HOST", "SMTP_PORT",
    "SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_SECURITY", "SMTP_TIMEOUT_SECONDS", "MAIL_FROM",
    "WORKER_CONCURRENCY", "WORKER_RECLAIM_IDLE_SECONDS", "WORKER_SHUTDOWN_SECONDS",
    "WORKER_MAX_ATTEMPTS", "WORKER_NAME",
)  # fmt: skip


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
