"""`SyncProducer` beside `Producer`: every scenario runs on both, with the same assertions, so the
two paths are proven to agree; then what only the sync one promises (threads, fork), and the
error contract of both (Redis refusing connections, frozen, restarted)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from service import (
    EmailTask,
    Producer,
    QueueFull,
    QueueUnavailable,
    SyncProducer,
)
from service.local.redis_server import RedisServer, free_port
from service.wire import decode_entry
from tests.conftest import as_entries

pytestmark = pytest.mark.fast

STREAM, DELAYED = "{emails}:stream", "{emails}:delayed"
TASKS = [EmailTask(to=f"u{i}@example.com", subject=f"s{i}", text="x") for i in range(8)]


class AnyProducer(Protocol):
    """The API both producers share, awaited (the sync one runs in a thread)."""

    async def enqueue(self, task: EmailTask, **options: Any) -> str: ...
    async def enqueue_many(self, tasks: list[EmailTask], **options: Any) -> list[str]: ...
    async def close(self) -> None: ...


class _Async:
    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    async def enqueue(self, task: EmailTask, **options: Any) -> str:
        return await self._producer.enqueue(task, **options)

    async def enqueue_many(self, tasks: list[EmailTask], **options: Any) -> list[str]:
        return await self._producer.enqueue_many(tasks, **options)

    async def close(self) -> None:
        await self._producer.aclose()


class _Sync:
    def __init__(self, producer: SyncProducer) -> None:
        self._producer = producer

    async def enqueue(self, task: EmailTask, **options: Any) -> str:
        return await asyncio.to_thread(self._producer.enqueue, task, **options)

    async def enqueue_many(self, tasks: list[EmailTask], **options: Any) -> list[str]:
        return await asyncio.to_thread(self._producer.enqueue_many, tasks, **options)

    async def close(self) -> None:
        self._producer.close()


def _open(kind: str, url: str, **options: Any) -> AnyProducer:
    if kind == "async":
        return _Async(Producer.from_url(url, **options))
    return _Sync(SyncProducer.from_url(url, **options))


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which producer a scenario runs on."""
    return str(request.param)


@pytest.fixture
async def producer(
    kind: str, redis_server: RedisServer, redis: Redis
) -> AsyncIterator[AnyProducer]:
    """A producer of that kind on an empty test database."""
    opened = _open(kind, redis_server.url)
    yield opened
    await opened.close()


async def test_tasks_are_written_as_the_worker_reads_them(
    producer: AnyProducer, redis: Redis
) -> None:
    first = await producer.enqueue(TASKS[0])
    rest = await producer.enqueue_many(TASKS[1:])
    entries = as_entries(await redis.xrange(STREAM))
    decoded = [decode_entry(fields) for _, fields in entries]
    assert [q.task_id for q in decoded] == [first, *rest]
    assert [q.task for q in decoded] == TASKS


async def test_scheduled_and_idempotent_tasks_take_the_script(
    producer: AnyProducer, redis: Redis
) -> None:
    later = await producer.enqueue(TASKS[0], delay=timedelta(minutes=5))
    once = await producer.enqueue(TASKS[1], idempotency_key="welcome:42")
    again = await producer.enqueue(TASKS[2], idempotency_key="welcome:42")
    assert await redis.zrange(DELAYED, 0, -1) == [later.encode()]
    assert again == once
    assert await redis.xlen(STREAM) == 1


async def test_a_full_queue_refuses_the_whole_batch(
    kind: str, redis_server: RedisServer, redis: Redis
) -> None:
    producer = _open(kind, redis_server.url, max_backlog=10)
    try:
        await producer.enqueue_many(TASKS)
        with pytest.raises(QueueFull) as caught:
            await producer.enqueue_many(TASKS[:3])
    finally:
        await producer.close()
    assert (caught.value.backlog, caught.value.limit, caught.value.maybe_enqueued) == (8, 10, False)
    assert await redis.xlen(STREAM) == 8


async def test_redis_out_of_memory_is_queue_full(producer: AnyProducer, redis: Redis) -> None:
    await redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueFull, match="Redis is out of memory"):
            await producer.enqueue(TASKS[0])
        with pytest.raises(QueueFull, match="Redis is out of memory"):
            await producer.enqueue(TASKS[0], idempotency_key="k")  # the script's path
    finally:
        await redis.config_set("maxmemory", "0")
    assert await redis.exists(STREAM) == 0


async def test_plain_tasks_far_below_the_limit_skip_the_script(
    kind: str, redis_server: RedisServer, redis: Redis
) -> None:
    # Without status records: with them, the plain path still notes each entry in a script.
    producer = _open(kind, redis_server.url, status_ttl=timedelta(0))
    await producer.enqueue(TASKS[0], idempotency_key="first")  # reads the backlog
    await redis.config_resetstat()
    await producer.enqueue_many(TASKS[1:4])
    await producer.enqueue(TASKS[4])
    stats = await redis.info("commandstats")
    assert "cmdstat_evalsha" not in stats
    assert stats["cmdstat_xadd"]["calls"] == 4
    assert await redis.xlen(STREAM) == 5
    await producer.close()


# --- the error contract ------------------------------------------------------------------


async def test_a_redis_that_refuses_connections_fails_fast_and_enqueued_nothing(kind: str) -> None:
    producer = _open(kind, f"redis://127.0.0.1:{free_port()}/0")
    began = time.monotonic()
    try:
        with pytest.raises(QueueUnavailable) as caught:
            await producer.enqueue(TASKS[0])
    finally:
        await producer.close()
    assert time.monotonic() - began < 1.0
    assert caught.value.maybe_enqueued is False
    assert caught.value.reason.startswith("ConnectionError: Error 111 connecting to 127.0.0.1:")
    assert str(caught.value).endswith("; nothing was enqueued")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may freeze or restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _pid(server: RedisServer) -> int:
    process = server._process  # the server this test freezes
    assert process is not None
    return process.pid


@pytest.mark.parametrize("path", ["plain", "script"])
async def test_a_frozen_redis_fails_within_the_timeout_and_may_have_enqueued(
    kind: str, private_redis: RedisServer, path: str
) -> None:
    producer = _open(kind, private_redis.url, timeout=0.5, connect_timeout=0.5)
    options = {"idempotency_key": "k"} if path == "script" else {}
    await producer.enqueue(TASKS[0])  # connected: the next command is written, then unanswered
    os.kill(_pid(private_redis), signal.SIGSTOP)
    began = time.monotonic()
    try:
        with pytest.raises(QueueUnavailable) as caught:
            await producer.enqueue(TASKS[1], **options)
    finally:
        os.kill(_pid(private_redis), signal.SIGCONT)
        await producer.close()
    assert 0.5 <= time.monotonic() - began < 1.5  # one timeout: a timeout is never retried
    assert caught.value.maybe_enqueued is True
    assert "Timeout reading from" in caught.value.reason
    assert str(caught.value).endswith("; it may have been enqueued")


async def test_a_connection_redis_closed_while_idle_is_replaced_at_once(
    kind: str, private_redis: RedisServer
) -> None:
    producer = _open(kind, private_redis.url)
    try:
        await producer.enqueue(TASKS[0])
        private_redis.stop()  # a restart: every pooled connection is closed under the producer
        private_redis.start()
        await producer.enqueue(TASKS[1])
    finally:
        await producer.close()


# --- what only the sync producer promises ---------------------------------------------------


def test_one_sync_producer_serves_many_threads(redis_server: RedisServer, redis: Redis) -> None:
    # A limit low enough that the threads cross from the fast path to the exact one.
    with SyncProducer.from_url(redis_server.url, max_backlog=5_000) as producer:
        ids: list[str] = []
        lock = threading.Lock()

        def enqueue_forty(n: int) -> None:
            for i in range(40):
                task = EmailTask(to=f"t{n}-{i}@example.com", subject="s", text="x")
                task_id = producer.enqueue(task) if i % 2 else producer.enqueue_many([task])[0]
                with lock:
                    ids.append(task_id)

        threads = [threading.Thread(target=enqueue_forty, args=(n,)) for n in range(25)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(set(ids)) == 1_000
    entries = asyncio.run(_stream_ids(redis_server.url))
    assert sorted(entries) == sorted(ids)


async def _stream_ids(url: str) -> list[str]:
    client = Redis.from_url(url)
    try:
        return [decode_entry(f).task_id for _, f in as_entries(await client.xrange(STREAM))]
    finally:
        await client.aclose()


_FORK_SCRIPT = """
import os, sys
from service import EmailTask, SyncProducer
producer = SyncProducer.from_url(sys.argv[1])
task = EmailTask(to="a@example.com", subject="s", text="x")
parent_first = producer.enqueue(task)  # the parent's pool now holds a connection
child = os.fork()
if child == 0:  # the child, as a pre-fork server's worker: its own connections
    ids = [producer.enqueue(task) for _ in range(10)]
    print("child", *ids, flush=True)
    os._exit(0)
ids = [producer.enqueue(task) for _ in range(10)]
_, status = os.waitpid(child, 0)
print("parent", parent_first, *ids, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_sync_producer_made_before_a_fork_works_in_the_child_and_the_parent(
    redis_server: RedisServer, redis: Redis
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, redis_server.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    enqueued = lines["parent"] + lines["child"]
    assert len(set(enqueued)) == 21
    assert sorted(asyncio.run(_stream_ids(redis_server.url))) == sorted(enqueued)
