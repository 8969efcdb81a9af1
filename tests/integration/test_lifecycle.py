"""The worker's lifecycle in-process (`serve` with a `Shutdown` the test controls): start,
deliver, stop on request, drain, and one deadline for the whole shutdown, even when the SMTP
server or Redis stops answering. The subprocess tests (signals, exit codes) are in
test_worker.py."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service import EmailTask, Producer
from service.connection import connect_redis
from service.local.redis_server import RedisServer
from service.settings import WorkerSettings
from service.worker.__main__ import serve
from service.worker.shutdown import Shutdown
from tests.conftest import GROUP, STREAM
from tests.smtp_server import SmtpServer

# Part of the inner-loop subset (`make test-fast`): real servers, but seconds in all.
pytestmark = pytest.mark.fast

# How far past WORKER_SHUTDOWN_SECONDS a stop may end: the event loop's own latency.
_MARGIN_SECONDS = 0.5


def _settings(redis_url: str, smtp: SmtpServer, **overrides: object) -> WorkerSettings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "smtp_timeout_seconds": 20,
        "mail_from": "sender@example.com",
        "worker_name": "in-process",
        "worker_reclaim_idle_seconds": 30,
        "worker_shutdown_seconds": 5,
        "worker_heartbeat_seconds": 0.2,
        **overrides,
    }
    return WorkerSettings(_env_file=None, **values)  # type: ignore[arg-type]


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll `condition` (state another thread or process changes) for up to `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while not await condition():  # noqa: ASYNC110 - nothing here to wait on but time
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds}s waiting for {what}") from None


async def _enqueue(url: str, count: int) -> list[str]:
    async with Producer.from_url(url) as producer:
        tasks = [EmailTask(to=f"u{n}@example.com", subject="s", text="x") for n in range(count)]
        return await producer.enqueue_many(tasks)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own, which the test may freeze (SIGSTOP)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_a_worker_delivers_then_drains_and_leaves_cleanly_on_request(
    redis: Redis, redis_server: RedisServer, smtp: SmtpServer
) -> None:
    task_ids = await _enqueue(redis_server.url, 5)
    shutdown = Shutdown(5)
    running = asyncio.create_task(serve(_settings(redis_server.url, smtp), shutdown))

    await _until(lambda: _true(sorted(smtp.task_ids()) == sorted(task_ids)), 10, "5 emails")
    await _until(lambda: _exists(redis, "{emails}:workers"), 5, "a heartbeat")
    shutdown.request("test")
    code = await asyncio.wait_for(running, 10)

    assert code == 0
    assert await redis.xlen(STREAM) == 0
    assert await redis.xinfo_consumers(STREAM, GROUP) == []  # it left the group
    assert await redis.hlen("{emails}:workers") == 0  # and removed its heartbeat
    connections = {received.peer for received in smtp.received}
    assert smtp.quits == len(connections)  # every open connection said QUIT


async def test_a_stalled_smtp_server_cannot_stretch_the_shutdown_past_its_deadline(
    redis: Redis, redis_server: RedisServer, smtp: SmtpServer
) -> None:
    smtp.behaviour.data_delay = 30.0  # the server takes the message and never answers
    await _enqueue(redis_server.url, 1)
    shutdown = Shutdown(1.0)
    running = asyncio.create_task(
        serve(_settings(redis_server.url, smtp, worker_shutdown_seconds=1.0), shutdown)
    )
    await _until(lambda: _true(smtp.data_started == 1), 10, "the send under way")

    began = time.monotonic()
    shutdown.request("test")
    code = await asyncio.wait_for(running, 10)

    assert time.monotonic() - began < 1.0 + _MARGIN_SECONDS
    assert code == 0  # not forced: the unfinished send's entry stays pending for another worker
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 1


async def test_redis_going_silent_mid_shutdown_cannot_stretch_it_past_its_deadline(
    private_redis: RedisServer, smtp: SmtpServer
) -> None:
    # The send is accepted, then Redis freezes: the fate write, leaving the group and removing
    # the heartbeat all wait on it; each gets only what is left of the one deadline.
    smtp.behaviour.data_delay = 0.5
    await _enqueue(private_redis.url, 1)
    shutdown = Shutdown(2.0)
    running = asyncio.create_task(
        serve(_settings(private_redis.url, smtp, worker_shutdown_seconds=2.0), shutdown)
    )
    process = private_redis._process  # the server this test may freeze
    assert process is not None
    pid = process.pid
    try:
        await _until(lambda: _true(smtp.data_started == 1), 10, "the send under way")
        os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        shutdown.request("test")
        code = await asyncio.wait_for(running, 15)
        took = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)

    assert took < 2.0 + _MARGIN_SECONDS
    assert code == 0
    assert len(smtp.received) == 1  # sent; its settle never reached Redis: a duplicate window
    client = connect_redis(private_redis.url)
    try:
        assert (await client.xpending(STREAM, GROUP))["pending"] == 1
    finally:
        await client.aclose()


async def test_a_second_request_forces_the_stop_at_once(
    redis: Redis, redis_server: RedisServer, smtp: SmtpServer
) -> None:
    smtp.behaviour.data_delay = 30.0
    await _enqueue(redis_server.url, 1)
    shutdown = Shutdown(60)
    running = asyncio.create_task(serve(_settings(redis_server.url, smtp), shutdown))
    await _until(lambda: _true(smtp.data_started == 1), 10, "the send under way")

    shutdown.request("first")
    await asyncio.sleep(0.2)
    assert not running.done()  # draining: the send has a minute
    began = time.monotonic()
    shutdown.request("second")
    code = await asyncio.wait_for(running, 10)

    assert code == 1
    assert time.monotonic() - began < _MARGIN_SECONDS


async def _true(value: bool) -> bool:
    return value


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))
