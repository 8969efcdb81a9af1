"""The producer against a real Redis: API, CLI, and what importing `service` pulls in."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from service import EmailTask, Producer, QueueFull
from service.local.redis_server import RedisServer
from service.wire import decode_entry
from tests.conftest import as_entries

# Part of the inner-loop subset (`make test-fast`): real servers, but seconds in all.
pytestmark = pytest.mark.fast

STREAM = "{emails}:stream"


async def test_enqueue_returns_the_task_id_written_to_the_stream(redis: Redis) -> None:
    producer = Producer(redis, queue="emails")
    task = EmailTask(to="a@example.com", subject="Hi", text="Hello")
    task_id = await producer.enqueue(task)
    entries = as_entries(await redis.xrange(STREAM))
    assert len(entries) == 1
    envelope = decode_entry(entries[0][1])
    assert (envelope.task_id, envelope.task) == (task_id, task)


async def test_enqueue_many_keeps_order_in_one_round_trip(
    redis_server: RedisServer, redis: Redis
) -> None:
    tasks = [EmailTask(to=f"u{i}@example.com", subject=str(i), text="x") for i in range(50)]
    async with Producer.from_url(redis_server.url, queue="bulk") as producer:
        task_ids = await producer.enqueue_many(tasks)
        assert await producer.enqueue_many([]) == []
    entries = as_entries(await redis.xrange("{bulk}:stream"))
    assert [decode_entry(fields).task_id for _, fields in entries] == task_ids
    assert [decode_entry(fields).task.subject for _, fields in entries] == [
        str(i) for i in range(50)
    ]


async def test_enqueue_refuses_what_is_not_a_task(redis: Redis) -> None:
    with pytest.raises(TypeError, match="expected an EmailTask, got dict"):
        await Producer(redis).enqueue({"to": "a@example.com"})  # type: ignore[arg-type]
    assert await redis.exists(STREAM) == 0


def _cli(redis_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.producer", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )


async def test_cli_enqueues_one_task(redis_server: RedisServer, redis: Redis) -> None:
    result = _cli(
        redis_server.url, "--to", "a@example.com", "--cc", "c@example.com", "--subject", "Hi",
        "--text", "Hello", "--header", "X-Tag: one", "--tag", "welcome", "--tag", "user:42",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ((_, fields),) = as_entries(await redis.xrange(STREAM))
    envelope = decode_entry(fields)
    assert result.stdout == f"{envelope.task_id}\n"
    assert envelope.task.cc == ["c@example.com"]
    assert envelope.task.headers == {"X-Tag": "one"}
    assert envelope.task.tags == ["welcome", "user:42"]


async def test_cli_jsonl_is_all_or_nothing(redis_server: RedisServer, redis: Redis) -> None:
    good = orjson.dumps({"to": "a@example.com", "subject": "s", "text": "t"}).decode()
    bad = orjson.dumps({"to": "a@example.com", "subject": "s\r\nBcc: x@example.com", "text": "t"})
    result = _cli(redis_server.url, "--jsonl", stdin=f"{good}\n{bad.decode()}\n{good}\n")
    assert result.returncode == 2
    assert "line 2: invalid task: subject: contains the control character" in result.stderr
    assert await redis.exists(STREAM) == 0

    result = _cli(redis_server.url, "--jsonl", stdin=f"{good}\n\n{good}\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 2
    assert await redis.xlen(STREAM) == 2


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--to", "nobody", "--subject", "s", "--text", "t"], "", "to.0: 'nobody' is not a single"),
        (["--to", "a@example.com", "--subject", "s"], "", "task: text or html is required"),
        (["--subject", "s", "--text", "t"], "", "--to is required"),
        (["--to", "a@example.com", "--text", "t", "--header", "nocolon"], "", "NAME:VALUE"),
        (["--jsonl"], "{not json\n", "line 1: not JSON"),
        (["--jsonl"], "", "no tasks on standard input"),
    ],
)
async def test_cli_bad_input_enqueues_nothing(
    redis_server: RedisServer, redis: Redis, args: list[str], stdin: str, message: str
) -> None:
    result = _cli(redis_server.url, *args, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert await redis.exists(STREAM) == 0


def test_cli_bad_redis_url_names_the_variable_without_the_password() -> None:
    result = _cli("http://user:hunter2@example.com", "--to", "a@example.com", "--text", "t")
    assert result.returncode == 2
    assert result.stderr.startswith("error: REDIS_URL: must start with redis://")
    assert "hunter2" not in result.stderr


def test_cli_reports_an_unreachable_redis() -> None:
    result = _cli("redis://127.0.0.1:1/0", "--to", "a@example.com", "--text", "t")
    assert result.returncode == 1
    assert "queue 'emails' is unavailable: ConnectionError: " in result.stderr
    assert result.stderr.rstrip().endswith("nothing was enqueued")


def test_importing_service_pulls_in_no_worker_or_smtp_code() -> None:
    code = (
        "import sys, service; "
        "bad = [m for m in sys.modules if m.startswith(('service.worker', 'aiosmtplib'))]; "
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


DELAYED = "{emails}:delayed"


async def test_idempotency_key_enqueues_once_and_returns_the_first_id(redis: Redis) -> None:
    producer = Producer(redis)
    task = EmailTask(to="a@example.com", subject="Welcome", text="x")
    first = await producer.enqueue(task, idempotency_key="welcome:42")
    again = await producer.enqueue(task, idempotency_key="welcome:42")
    other = await producer.enqueue(task, idempotency_key="welcome:43")
    assert again == first
    assert other != first
    assert await redis.xlen(STREAM) == 2
    assert 0 < await redis.pttl("{emails}:idem:welcome:42") <= 24 * 3600 * 1000


async def test_idempotency_window_expires(redis: Redis) -> None:
    producer = Producer(redis, idempotency_window=timedelta(milliseconds=200))
    task = EmailTask(to="a@example.com", subject="s", text="x")
    first = await producer.enqueue(task, idempotency_key="k")
    await asyncio.sleep(0.3)
    assert await producer.enqueue(task, idempotency_key="k") != first
    assert await redis.xlen(STREAM) == 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"idempotency_key": ""}, "idempotency_key must be a string of 1 to 200"),
        ({"idempotency_key": "x" * 201}, "idempotency_key must be a string of 1 to 200"),
        ({"idempotency_key": "a\nb"}, "must not contain control characters"),
        ({"delay": -1}, "delay must be between 0 and 366 days"),
        ({"delay": timedelta(days=400)}, "delay must be between 0 and 366 days"),
        ({"send_at": datetime(2030, 1, 1)}, "send_at must be timezone-aware"),
        ({"send_at": datetime.now(UTC) + timedelta(days=400)}, "send_at must be within 366"),
        ({"send_at": datetime.now(UTC), "delay": 1}, "give send_at or delay, not both"),
    ],
)
async def test_bad_options_are_refused_before_anything_is_sent(
    redis: Redis, options: dict[str, Any], error: str
) -> None:
    task = EmailTask(to="a@example.com", subject="s", text="x")
    with pytest.raises(ValueError, match=error):
        await Producer(redis).enqueue(task, **options)
    assert await redis.exists(STREAM, DELAYED) == 0


async def test_scheduled_tasks_wait_in_the_delayed_set(redis: Redis) -> None:
    producer = Producer(redis)
    task = EmailTask(to="a@example.com", subject="s", text="x")
    before_ms = time.time_ns() // 1_000_000
    later = await producer.enqueue(task, delay=timedelta(minutes=5))
    at = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await producer.enqueue(task, send_at=at)
    past = await producer.enqueue(task, send_at=datetime.now(UTC) - timedelta(hours=1))
    assert await redis.xlen(STREAM) == 1  # a time in the past means now
    due_later = await redis.zscore(DELAYED, later)
    assert due_later is not None
    assert before_ms + 300_000 <= due_later <= time.time() * 1000 + 300_000
    assert await redis.zscore(DELAYED, scheduled) == int(at.timestamp() * 1000)
    ((_, fields),) = as_entries(await redis.xrange(STREAM))
    assert decode_entry(fields).task_id == past


async def test_queue_full_refuses_the_whole_batch(redis: Redis) -> None:
    producer = Producer(redis, max_backlog=10)
    tasks = [EmailTask(to=f"u{i}@example.com", subject="s", text="x") for i in range(8)]
    await producer.enqueue_many(tasks)
    await producer.enqueue(tasks[0], delay=60)  # delayed tasks count too: 9 of 10
    with pytest.raises(QueueFull) as caught:
        await producer.enqueue_many(tasks[:2])
    assert (caught.value.backlog, caught.value.limit, caught.value.queue) == (9, 10, "emails")
    assert "queue 'emails' is full: 9 tasks waiting and the limit is 10" in str(caught.value)
    assert await redis.xlen(STREAM) == 8  # nothing of the refused batch went in
    await producer.enqueue(tasks[0])  # the tenth fits
    with pytest.raises(QueueFull):
        await producer.enqueue(tasks[0])
    assert await Producer(redis, max_backlog=None).enqueue(tasks[0])


async def test_redis_out_of_memory_is_queue_full(redis: Redis) -> None:
    await redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueFull, match="Redis is out of memory"):
            await Producer(redis).enqueue(EmailTask(to="a@example.com", subject="s", text="x"))
    finally:
        await redis.config_set("maxmemory", "0")
    assert await redis.exists(STREAM) == 0


async def test_cli_schedules_and_deduplicates(redis_server: RedisServer, redis: Redis) -> None:
    args = ("--to", "a@example.com", "--subject", "s", "--text", "x")
    delayed = _cli(redis_server.url, *args, "--delay", "60")
    assert delayed.returncode == 0, delayed.stderr
    first = _cli(redis_server.url, *args, "--idempotency-key", "k1")
    again = _cli(redis_server.url, *args, "--idempotency-key", "k1")
    assert first.stdout == again.stdout
    assert await redis.zcard(DELAYED) == 1
    assert await redis.xlen(STREAM) == 1
    bad = _cli(redis_server.url, *args, "--send-at", "tomorrow")
    assert (bad.returncode, bad.stderr) == (2, "error: --send-at 'tomorrow': not an ISO 8601 "
                                           "date and time\n")  # fmt: skip
    naive = _cli(redis_server.url, *args, "--send-at", "2030-01-01T09:00")
    assert naive.returncode == 2
    assert "send_at must be timezone-aware" in naive.stderr


async def test_cli_reports_a_full_queue(redis_server: RedisServer, redis: Redis) -> None:
    args = ("--to", "a@example.com", "--subject", "s", "--text", "x", "--max-backlog", "1")
    assert _cli(redis_server.url, *args).returncode == 0
    full = _cli(redis_server.url, *args)
    assert full.returncode == 1
    assert "is full: 1 tasks waiting and the limit is 1; nothing was enqueued" in full.stderr


async def test_a_full_queue_still_answers_a_known_idempotency_key(redis: Redis) -> None:
    producer = Producer(redis, max_backlog=1)
    task = EmailTask(to="a@example.com", subject="s", text="x")
    first = await producer.enqueue(task, idempotency_key="order:7")
    # A retried request for the same email gets its id back, full queue or not...
    assert await producer.enqueue(task, idempotency_key="order:7") == first
    # ...while a new email is refused.
    with pytest.raises(QueueFull):
        await producer.enqueue(task, idempotency_key="order:8")
    assert await redis.xlen(STREAM) == 1


async def _evalsha_calls(redis: Redis) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_plain_enqueues_far_below_the_limit_skip_the_script(redis: Redis) -> None:
    # The default limit, 100,000; no status records (with them, a script notes each entry).
    producer = Producer(redis, status_ttl=timedelta(0))
    tasks = [EmailTask(to=f"u{i}@example.com", subject=str(i), text="x") for i in range(300)]
    await redis.config_resetstat()

    task_ids = [await producer.enqueue(task) for task in tasks]

    # One script call reads the backlog, then bare XADDs until that read is 20 ms old.
    assert 1 <= await _evalsha_calls(redis) < len(tasks) // 3
    envelopes = [decode_entry(fields) for _, fields in as_entries(await redis.xrange(STREAM))]
    assert [(e.task_id, e.task) for e in envelopes] == list(zip(task_ids, tasks, strict=True))


async def test_near_the_limit_every_enqueue_is_checked_exactly(redis: Redis) -> None:
    producer = Producer(redis, max_backlog=2_000)  # margin 1,000
    task = EmailTask(to="a@example.com", subject="s", text="x")
    await producer.enqueue_many([task] * 999)
    await redis.config_resetstat()

    for _ in range(1_001):
        await producer.enqueue(task)
    with pytest.raises(QueueFull) as caught:
        await producer.enqueue(task)

    assert (caught.value.backlog, await redis.xlen(STREAM)) == (2_000, 2_000)
    # At most the first of those could skip the check (backlog 999 + margin < 2,000).
    assert await _evalsha_calls(redis) >= 1_001


async def test_a_plain_batch_far_below_the_limit_is_one_multi_exec(redis: Redis) -> None:
    producer = Producer(redis, status_ttl=timedelta(0))  # the default limit, 100,000
    tasks = [EmailTask(to=f"u{i}@example.com", subject=str(i), text="x") for i in range(100)]
    await redis.config_resetstat()

    first = await producer.enqueue_many(tasks[:50])  # reads the backlog: the script
    second = await producer.enqueue_many(tasks[50:])  # within 20 ms of that read: MULTI/EXEC

    stats: Any = await redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_exec"]["calls"] == 1
    envelopes = [decode_entry(fields) for _, fields in as_entries(await redis.xrange(STREAM))]
    assert [(e.task_id, e.task) for e in envelopes] == list(zip(first + second, tasks, strict=True))


async def test_redis_out_of_memory_refuses_a_plain_batch_whole(redis: Redis) -> None:
    producer = Producer(redis, max_backlog=None)  # no limit: every batch takes the plain path
    tasks = [EmailTask(to=f"u{i}@example.com", subject="s", text="x") for i in range(3)]
    await redis.config_set("maxmemory", "1")
    try:
        with pytest.raises(QueueFull, match="Redis is out of memory"):
            await producer.enqueue_many(tasks)
    finally:
        await redis.config_set("maxmemory", "0")
    assert await redis.exists(STREAM) == 0
