"""Real servers for the tests: a private redis-server and a controllable aiosmtpd SMTP server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from service import EmailTask, Producer
from service.connection import connect_redis
from service.local.redis_server import RedisServer, free_port
from tests.smtp_server import SmtpServer

STREAM, DEAD, DELAYED, GROUP = "{emails}:stream", "{emails}:dead", "{emails}:delayed", "workers"

_UNIT_TESTS = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every unit test belongs to the inner-loop subset (`make test-fast`, `-m fast`)."""
    for item in items:
        if item.path.is_relative_to(_UNIT_TESTS):
            item.add_marker(pytest.mark.fast)


# Settings the tests control; anything inherited from the developer's shell is removed.
_SETTING_PREFIXES = ("REDIS_", "SMTP_", "MAIL_", "EMAIL_", "WORKER_", "LOG_")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (tests that restart Redis start their own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client on an empty database."""
    client = connect_redis(redis_server.url)
    assert isinstance(client, Redis)  # a redis:// URL
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def db(redis_server: RedisServer) -> Iterator[redis_sync.Redis]:
    """A synchronous client on an empty database, for tests that drive worker subprocesses."""
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """An SMTP server that records what it accepts and can be told to refuse or stall."""
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker_env(redis_server: RedisServer, smtp: SmtpServer, db: redis_sync.Redis) -> dict[str, str]:
    """Environment for a worker subprocess wired to the test servers, with short timings.

    The database starts empty (`db`): a test that leaves tasks queued on purpose must not
    hand them to the next test's worker.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(
        REDIS_URL=redis_server.url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        SMTP_SECURITY="none",
        SMTP_TIMEOUT_SECONDS="2",
        MAIL_FROM="Sender <sender@example.com>",
        WORKER_CONCURRENCY="10",
        WORKER_RECLAIM_IDLE_SECONDS="3",
        WORKER_SHUTDOWN_SECONDS="5",
        WORKER_RETRY_BASE_SECONDS="0.2",
        WORKER_RETRY_MAX_SECONDS="1",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    return env


class WorkerProcess:
    """`python -m service.worker` as a real subprocess, its stdout captured to a file."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.log_path = workdir / f"worker-{time.monotonic_ns()}.log"
        # The working directory holds no .env: only `env` configures the worker.
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.worker"],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        """Everything the worker wrote so far."""
        return self.log_path.read_text()

    def wait_for_log(self, event: str, timeout: float = 15.0) -> None:
        """Block until a log line carries `event`."""
        wait_until(lambda: f'"event":"{event}"' in self.output(), timeout, what=event)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (if still running) and wait; return the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (settings overridable as keyword arguments); all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        worker = WorkerProcess({**worker_env, **overrides}, tmp_path)
        started.append(worker)
        worker.wait_for_log("worker_started")
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def as_entries(reply: object) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """An XRANGE reply, typed: redis-py types it as the union of every protocol's shapes."""
    assert isinstance(reply, list)
    return reply


def enqueue(url: str, tasks: list[EmailTask], **options: Any) -> list[str]:
    """Enqueue `tasks` with a real `Producer` (options go to `enqueue_many`)."""

    async def run() -> list[str]:
        async with Producer.from_url(url) as producer:
            return await producer.enqueue_many(tasks, **options)

    return asyncio.run(run())


def dead_letters(db: redis_sync.Redis) -> list[dict[bytes, bytes]]:
    """Every dead-letter record, oldest first."""
    return [fields for _, fields in as_entries(db.xrange(DEAD))]


def pending_count(db: redis_sync.Redis) -> int:
    """Entries delivered to a consumer and not yet settled."""
    if not db.exists(STREAM):
        return 0
    return int(db.xpending(STREAM, GROUP)["pending"])
