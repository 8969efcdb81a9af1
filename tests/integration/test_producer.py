"""The producer against a real Redis: API, CLI, and what importing `service` pulls in."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from redis.asyncio import Redis

from service import EmailTask, Producer
from service.local.redis_server import RedisServer
from service.wire import decode_entry
from tests.conftest import as_entries

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
        "--text", "Hello", "--header", "X-Tag: one",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ((_, fields),) = as_entries(await redis.xrange(STREAM))
    envelope = decode_entry(fields)
    assert result.stdout == f"{envelope.task_id}\n"
    assert envelope.task.cc == ["c@example.com"]
    assert envelope.task.headers == {"X-Tag": "one"}


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
    assert "could not enqueue on Redis: ConnectionError" in result.stderr


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
