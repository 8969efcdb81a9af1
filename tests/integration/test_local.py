"""`make run` (`python -m service.local`) as a real subprocess in a directory of its own: which
Redis and SMTP port it takes, how the bare CLIs beside it find its Redis, a second one refused,
Ctrl-C, a failed start.

Every stack's default Redis address and SMTP sink port are ports the test owns
(TEST_DEFAULT_REDIS_URL, TEST_DEFAULT_SINK_PORT), for the CLIs too: no test may reach the
machine's own Redis on localhost:6379.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.local.redis_server import RedisServer, answers_ping, free_port
from tests.conftest import wait_until

# Inherited settings are dropped: only what a test sets configures the stack and the CLIs.
_SETTING_PREFIXES = ("REDIS_", "SMTP_", "MAIL_", "EMAIL_", "WORKER_", "LOG_", "TEST_DEFAULT_")


class Stack:
    """`python -m service.local` in `workdir`, its output captured to a file."""

    def __init__(self, workdir: Path, redis_port: int, sink_port: int, **env: str) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
        self.env.update(
            TEST_DEFAULT_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            TEST_DEFAULT_SINK_PORT=str(sink_port),
            LOG_FORMAT="json",
            **env,
        )
        self.log_path = workdir / f"stack-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            # A process group of its own, which a test signals as a terminal's Ctrl-C would.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.local"], cwd=workdir, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, process_group=0,
            )  # fmt: skip

    def output(self) -> str:
        """Everything the stack and its worker wrote so far."""
        return self.log_path.read_text()

    def wait_started(self) -> None:
        """Block until the worker runs; fail with the stack's output if it ends first."""
        wait_until(
            lambda: '"event":"worker_started"' in self.output() or self.process.poll() is not None,
            20,
            "the local stack",
        )
        assert self.process.poll() is None, self.output()

    def events(self) -> list[dict[str, Any]]:
        """The worker's log lines so far."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def state(self) -> dict[str, Any]:
        """`var/local/stack.json`."""
        state: dict[str, Any] = json.loads((self.workdir / "var/local/stack.json").read_text())
        return state

    def ctrl_c(self) -> int:
        """SIGINT to the stack's whole process group, as a terminal sends it; the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m <args>` run beside the stack: same directory, no REDIS_URL."""
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def send_one_email(self) -> None:
        """Enqueue with the bare producer CLI; check that the sink stored it under var/mail/."""
        result = self.cli("service.producer", "--to", "you@example.com", "--text", "It works")
        assert result.returncode == 0, result.stderr
        assert result.stderr == (
            f"using the Redis of make run (pid {self.process.pid}, var/local/stack.json): "
            f"{self.state()['redis_url']}\n"
        )
        mail = self.workdir / "var/mail"
        wait_until(lambda: any(mail.iterdir()), 15, "a stored email")
        (stored,) = mail.iterdir()
        assert result.stdout.strip() in stored.read_text()  # the task id, in the Message-ID
        assert "X-Envelope-From: worker@example.com\n" in stored.read_text()  # MAIL_FROM unset


StartStack = Callable[..., Stack]


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[StartStack]:
    """Start stacks in `tmp_path`; any still running at the end is stopped."""
    started: list[Stack] = []

    def start(redis_port: int, sink_port: int, **env: str) -> Stack:
        stack = Stack(tmp_path, redis_port, sink_port, **env)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        if stack.process.poll() is None:
            stack.process.terminate()  # it stops its worker and servers
            try:
                stack.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stack.process.kill()
                stack.process.wait()


@pytest.fixture
def listener() -> Iterator[Callable[[], int]]:
    """Plain TCP listeners that never answer (not Redis, not SMTP); each returns its port."""
    sockets: list[socket.socket] = []

    def listen() -> int:
        sock = socket.create_server(("127.0.0.1", 0))
        sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    yield listen
    for sock in sockets:
        sock.close()


def test_uses_the_redis_that_answers_at_the_default_address(
    tmp_path: Path, start_stack: StartStack
) -> None:
    existing = RedisServer(tmp_path / "existing-redis")
    existing.start()
    try:
        stack = start_stack(existing.port, free_port())
        stack.wait_started()
        url = f"redis://127.0.0.1:{existing.port}/0"
        assert (
            f"redis: using the Redis that answers on 127.0.0.1:{existing.port}; "
            f"from another shell: REDIS_URL={url}\n"
        ) in stack.output()
        assert stack.state()["redis_url"] == url
        assert not (tmp_path / "var/redis").exists()  # no redis-server of its own
        stack.send_one_email()
        assert stack.ctrl_c() == 0
        assert answers_ping("127.0.0.1", existing.port)  # not ours to stop
        assert not (tmp_path / "var/local/stack.json").exists()
    finally:
        existing.stop()


def test_starts_redis_server_at_the_default_address_when_none_answers(
    tmp_path: Path, start_stack: StartStack
) -> None:
    port = free_port()
    stack = start_stack(port, free_port())
    stack.wait_started()
    url = f"redis://127.0.0.1:{port}/0"
    assert (
        f"redis: started redis-server on 127.0.0.1:{port} (data in var/redis/); "
        f"from another shell: REDIS_URL={url}\n"
    ) in stack.output()
    assert stack.state()["redis_url"] == url
    assert answers_ping("127.0.0.1", port)
    stack.send_one_email()
    assert stack.ctrl_c() == 0
    assert not answers_ping("127.0.0.1", port)  # stopped with the stack
    assert any((tmp_path / "var/redis").glob("appendonly*"))  # it persisted there


def test_takes_free_ports_when_the_defaults_are_taken_by_other_servers(
    start_stack: StartStack, listener: Callable[[], int]
) -> None:
    redis_default, sink_default = listener(), listener()
    stack = start_stack(redis_default, sink_default)
    stack.wait_started()
    state = stack.state()
    redis_port = int(state["redis_url"].rsplit(":", 1)[1].split("/")[0])
    sink_port = int(state["smtp"].rsplit(":", 1)[1])
    assert redis_port != redis_default
    assert sink_port != sink_default
    assert (
        f"redis: started redis-server on 127.0.0.1:{redis_port}, as 127.0.0.1:{redis_default} "
        f"is taken and does not answer PING (data in var/redis/); "
        f"from another shell: REDIS_URL={state['redis_url']}\n"
    ) in stack.output()
    smtp_line = f"smtp: sink on 127.0.0.1:{sink_port} ({sink_default} is taken), mail in var/mail/"
    assert f"{smtp_line}\n" in stack.output()
    stack.send_one_email()
    assert stack.ctrl_c() == 0


def test_a_redis_url_in_dotenv_is_used_as_it_is(tmp_path: Path, start_stack: StartStack) -> None:
    configured = RedisServer(tmp_path / "configured-redis")
    configured.start()
    try:
        url = f"redis://127.0.0.1:{configured.port}/0"
        (tmp_path / ".env").write_text(f"REDIS_URL={url}\n")
        default_port = free_port()
        stack = start_stack(default_port, free_port())
        stack.wait_started()
        assert f"redis: {url}, as REDIS_URL says\n" in stack.output()
        (starting,) = [e for e in stack.events() if e["event"] == "worker_starting"]
        assert starting["redis"] == url
        assert stack.state()["redis_url"] == url
        assert not answers_ping("127.0.0.1", default_port)
        assert not (tmp_path / "var/redis").exists()
        assert stack.ctrl_c() == 0
    finally:
        configured.stop()


def test_a_second_stack_in_the_same_directory_is_refused(
    tmp_path: Path, start_stack: StartStack
) -> None:
    first = start_stack(free_port(), free_port())
    first.wait_started()
    state = first.state()
    second = first.cli("service.local")
    assert second.returncode == 1
    assert second.stdout == ""  # nothing started, nothing said but why
    assert second.stderr == (
        f"make run: already running in this directory (pid {first.process.pid}, Redis "
        f"{state['redis_url']}, mail in {tmp_path / 'var/mail'}/); not starting another. "
        f"To stop it: Ctrl-C in its terminal, or kill {first.process.pid}\n"
    )
    assert first.state() == state
    assert first.process.poll() is None
    assert first.ctrl_c() == 0


def test_ctrl_c_reaches_the_worker_once_and_everything_exits_0(
    tmp_path: Path, start_stack: StartStack
) -> None:
    port = free_port()
    stack = start_stack(port, free_port())
    stack.wait_started()
    (worker_pid,) = [e["pid"] for e in stack.events() if e["event"] == "worker_starting"]
    # Outside the group a terminal's Ctrl-C reaches (two SIGINTs close together can merge into
    # one, so the count below alone does not show it): only the stack passes the signal on.
    assert os.getpgid(worker_pid) != os.getpgid(stack.process.pid)
    assert stack.ctrl_c() == 0
    events = stack.events()
    stops = [
        (e["event"], e.get("signal"), e["forced"])
        for e in events
        if e["event"] in ("stop_requested", "worker_stopped")
    ]
    assert stops == [("stop_requested", "SIGINT", False), ("worker_stopped", None, False)]
    # Redis was stopped by the stack once the worker had drained, not by the Ctrl-C.
    redis_log = (tmp_path / "var/redis/redis.log").read_text()
    assert "Received SIGTERM" in redis_log
    assert "Received SIGINT" not in redis_log
    assert not answers_ping("127.0.0.1", port)


def test_a_failed_start_says_why_in_one_line_and_leaves_nothing_running(
    tmp_path: Path, start_stack: StartStack
) -> None:
    log = tmp_path / "var/redis/redis.log"
    log.parent.mkdir(parents=True)
    log.write_text("1:M an earlier run's last line\n")  # not this start's reason
    stack = start_stack(free_port(), free_port(), REDIS_SERVER="/bin/false")  # exits at once
    assert stack.process.wait(timeout=30) == 1
    assert stack.output() == f"make run: redis-server exited: it logged nothing; see {log}\n"
    assert not (tmp_path / "var/local/stack.json").exists()
