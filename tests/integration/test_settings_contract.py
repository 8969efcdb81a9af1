"""A bad setting stops every command at once: one line naming the variable, exit code 2.

`python -m service.worker` prints `error: invalid setting VARIABLE: reason`; the producer and
admin CLIs print `error: VARIABLE: reason`. Each case runs the real command against the test
servers: a value that passed the settings and failed later (a crash with a traceback, exit 1) or
never (retried forever) breaks that contract. No message echoes a password.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.local.redis_server import free_port
from tests.servers import redis_server

SECRET = "hunter2-url-pw"  # noqa: S105 - the test server's password, checked for leaks


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server that wants SECRET: every URL here is right but for the one fault."""
    port = free_port()
    args = ["--port", str(port), "--requirepass", SECRET, "--save", ""]
    with redis_server(tmp_path_factory.mktemp("redis"), args, _redis(port, "/0")):
        yield port


def _redis(port: int, tail: str, scheme: str = "redis") -> str:
    """The test server's URL, with its password, followed by `tail`."""
    return f"{scheme}://:{SECRET}@127.0.0.1:{port}{tail}"


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))  # noqa: S104 - as the metrics server binds by default
        listener.listen()
        yield listener.getsockname()[1]


# Each: the overrides (given the Redis port and a busy port), the variable, part of the reason.
WORKER_CASES: dict[str, tuple[Callable[[int, int], dict[str, str]], str, str]] = {
    "metrics host does not resolve": (
        lambda r, busy: {"METRICS_HOST": "no-such-host.invalid", "METRICS_PORT": str(free_port())},
        "METRICS_HOST",
        "does not resolve",
    ),
    "metrics host not of this machine": (
        lambda r, busy: {"METRICS_HOST": "192.0.2.1", "METRICS_PORT": str(free_port())},
        "METRICS_HOST",
        "not an address of this machine",
    ),
    "metrics port busy": (
        lambda r, busy: {"METRICS_PORT": str(busy)},
        "METRICS_PORT",
        "in use",
    ),
    "metrics host empty": (
        lambda r, busy: {"METRICS_HOST": "", "METRICS_PORT": str(free_port())},
        "METRICS_HOST",
        "empty",
    ),
    "metrics host blank": (
        lambda r, busy: {"METRICS_HOST": "  ", "METRICS_PORT": str(free_port())},
        "METRICS_HOST",
        "empty",
    ),
    "redis option not a number": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/0?socket_timeout=abc")},
        "REDIS_URL",
        "socket_timeout",
    ),
    "redis option below the blocking read": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/0?socket_timeout=1")},
        "REDIS_URL",
        "socket_timeout",
    ),
    "redis option not a boolean": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/0?socket_keepalive=maybe")},
        "REDIS_URL",
        "socket_keepalive",
    ),
    "redis option unknown": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/0?sockettimeout=30")},
        "REDIS_URL",
        "sockettimeout",
    ),
    "redis option the service pins": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/0?protocol=3")},
        "REDIS_URL",
        "protocol",
    ),
    "redis tls option on redis://": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/0?ssl_cert_reqs=none")},
        "REDIS_URL",
        "rediss://",
    ),
    "redis database not a number": (
        lambda r, busy: {"REDIS_URL": _redis(r, "/abc")},
        "REDIS_URL",
        "database",
    ),
    "redis ca file missing": (
        lambda r, busy: {
            "REDIS_URL": _redis(r, "/0?ssl_ca_certs=/nonexistent/ca.pem", scheme="rediss")
        },
        "REDIS_URL",
        "ssl_ca_certs",
    ),
    "redis host with a space": (
        lambda r, busy: {"REDIS_URL": f"redis://:{SECRET}@local host:{r}/0"},
        "REDIS_URL",
        "host",
    ),
    "redis unix socket without a path": (
        lambda r, busy: {"REDIS_URL": "unix://"},
        "REDIS_URL",
        "socket path",
    ),
    "rate limit without a period": (
        lambda r, busy: {"SMTP_RATE_LIMIT": "14"},
        "SMTP_RATE_LIMIT",
        "is not a rate",
    ),
    "smtp host empty": (lambda r, busy: {"SMTP_HOST": ""}, "SMTP_HOST", "empty"),
    "smtp host blank": (lambda r, busy: {"SMTP_HOST": "   "}, "SMTP_HOST", "empty"),
    "smtp host with a port": (
        lambda r, busy: {"SMTP_HOST": "127.0.0.1:2525"},
        "SMTP_HOST",
        "SMTP_PORT",
    ),
    "smtp host a url": (
        lambda r, busy: {"SMTP_HOST": "smtp://mail.example.com"},
        "SMTP_HOST",
        "not a URL",
    ),
    "smtp credentials empty": (
        lambda r, busy: {"SMTP_USERNAME": "", "SMTP_PASSWORD": ""},
        "SMTP_USERNAME",
        "empty",
    ),
}


def _run(
    module: str, env: dict[str, str], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    # A command that does not stop at once on a bad setting fails the test here (TimeoutExpired).
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], prefix: str, reason: str) -> None:
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(prefix), lines[0]
    assert reason in lines[0]
    assert SECRET not in result.stderr


@pytest.mark.parametrize("case", list(WORKER_CASES))
def test_worker_stops_with_one_line_naming_the_variable(
    case: str,
    redis_port: int,
    busy_port: int,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    overrides, variable, reason = WORKER_CASES[case]
    env = {**worker_env, **overrides(redis_port, busy_port)}
    result = _run("service.worker", env, tmp_path)
    _assert_one_line(result, f"error: invalid setting {variable}: ", reason)


def test_worker_stops_on_a_dotenv_that_is_not_utf8(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_bytes(b"SMTP_HOST=\xff\n")
    result = _run("service.worker", worker_env, tmp_path)
    _assert_one_line(result, "error: invalid setting .env: ", "not UTF-8")


# Each: what follows host:port in REDIS_URL, its scheme, part of the reason.
CLI_CASES = {
    "option not a number": ("/0?socket_timeout=abc", "redis", "socket_timeout"),
    "tls option on redis://": ("/0?ssl_cert_reqs=none", "redis", "rediss://"),
    "database not a number": ("/abc", "redis", "database"),
    "ca file missing": ("/0?ssl_ca_certs=/nonexistent/ca.pem", "rediss", "ssl_ca_certs"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
@pytest.mark.parametrize(
    "command",
    [
        ["service.producer", "--to", "a@example.com", "--text", "t"],
        ["service.admin", "stats"],
    ],
    ids=["producer", "admin"],
)
def test_clis_stop_with_one_line_naming_the_variable(
    command: list[str],
    case: str,
    redis_port: int,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    tail, scheme, reason = CLI_CASES[case]
    env = {**worker_env, "REDIS_URL": _redis(redis_port, tail, scheme)}
    result = _run(command[0], env, tmp_path, *command[1:])
    _assert_one_line(result, "error: REDIS_URL: ", reason)
