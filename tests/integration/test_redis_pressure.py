"""A worker against a Redis under pressure: at `maxmemory` (noeviction), restarted empty.

Each test runs its own redis-server, so it can fill it, restart it, or take its memory away
without disturbing the others.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis as redis_sync

from service import EmailTask
from service.local.redis_server import free_port
from tests.conftest import (
    DELAYED,
    GROUP,
    STREAM,
    WorkerProcess,
    dead_letters,
    enqueue,
    pending_count,
    wait_until,
)
from tests.servers import redis_server
from tests.smtp_server import SmtpServer

# No persistence: what Render's free Key Value runs, and what a restart empties.
_VOLATILE = ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"]


@contextlib.contextmanager
def volatile_redis(workdir: Path, port: int | None = None) -> Iterator[tuple[str, int]]:
    """A redis-server without persistence; yields its URL and port."""
    port = port or free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_server(workdir, ["--port", str(port), *_VOLATILE], url):
        yield url, port


@contextlib.contextmanager
def running(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    try:
        yield worker
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def events(worker: WorkerProcess, name: str) -> list[dict[str, object]]:
    lines = (orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == name]


def _task(to: str, n: int) -> EmailTask:
    return EmailTask(to=to, subject=f"pressure {n}", text="body")


def test_a_worker_at_maxmemory_keeps_sending_holds_what_it_cannot_write_and_recovers(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    smtp.behaviour.data_delay = 0.3
    smtp.behaviour.rcpt_replies = {
        "retry@example.com": ["451 4.3.0 try again later"],  # then accepted
        "dead@example.com": "550 5.1.1 no such user",
    }
    with volatile_redis(tmp_path / "redis") as (url, _):
        db = redis_sync.Redis.from_url(url)
        env = {**worker_env, "REDIS_URL": url, "WORKER_CONCURRENCY": "4",
               "WORKER_HEARTBEAT_SECONDS": "0.2"}  # fmt: skip
        with running(WorkerProcess(env, tmp_path)) as worker:
            worker.wait_for_log("worker_started")
            plain = enqueue(url, [_task(f"ok{n}@example.com", n) for n in range(8)])
            retried = enqueue(url, [_task("retry@example.com", 1)])
            dead = enqueue(url, [_task("dead@example.com", 2)])
            later = enqueue(url, [_task("later@example.com", 3)], delay=1)  # due under OOM
            wait_until(lambda: smtp.data_started >= 1, 10, "the first sends under way")
            db.config_set("maxmemory", 1)  # every write that adds data is refused from now on

            worker.wait_for_log("redis_out_of_memory")
            # Heartbeats, promotions, retry copies and dead letters all meet the refusal...
            wait_until(lambda: set(plain) <= set(smtp.task_ids()), 20, "the plain sends")
            time.sleep(2)
            assert worker.process.poll() is None, worker.output()[-3000:]
            # ...and what could not be written is still pending (the retry, the dead letter)
            # or delayed (the promotion): nothing lost, nothing written twice.
            assert pending_count(db) == 2
            assert db.zcard(DELAYED) == 1
            assert dead_letters(db) == []

            db.config_set("maxmemory", 0)
            wanted = {*plain, *retried, *later}
            wait_until(lambda: wanted <= set(smtp.task_ids()), 20, "every sendable task")
            wait_until(lambda: len(dead_letters(db)) == 1, 10, "the dead letter")
            wait_until(lambda: db.xlen(STREAM) == 0 and pending_count(db) == 0, 10, "settled")
            assert worker.stop() == 0
            assert dead_letters(db)[0][b"id"].decode() == dead[0]

    assert sorted(smtp.task_ids()) == sorted(wanted)  # each once
    (full,) = events(worker, "redis_out_of_memory")  # once per change of state
    assert (full["level"], full["maxmemory"], full["maxmemory_policy"]) == (
        "error",
        1,
        "noeviction",
    )
    assert isinstance(full["used_memory"], int)
    assert len(events(worker, "redis_memory_available")) == 1
    assert events(worker, "worker_failed") == []


def test_a_worker_starts_at_maxmemory_when_its_group_exists(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    with volatile_redis(tmp_path / "redis") as (url, _):
        db = redis_sync.Redis.from_url(url)
        db.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        task_ids = enqueue(url, [_task(f"a{n}@example.com", n) for n in range(3)])
        db.config_set("maxmemory", 1)
        with running(WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path)) as worker:
            worker.wait_for_log("worker_started")
            wait_until(lambda: db.xlen(STREAM) == 0, 10, "every entry settled")
            assert worker.stop() == 0
    assert sorted(smtp.task_ids()) == sorted(task_ids)


def test_a_worker_waits_at_maxmemory_to_create_its_group_then_starts(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    with volatile_redis(tmp_path / "redis") as (url, _):
        db = redis_sync.Redis.from_url(url)
        db.config_set("maxmemory", 1)
        with running(WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path)) as worker:
            worker.wait_for_log("redis_out_of_memory")
            time.sleep(1)
            assert worker.process.poll() is None, worker.output()[-3000:]
            assert not events(worker, "worker_started")
            db.config_set("maxmemory", 0)
            worker.wait_for_log("worker_started")
            (task_id,) = enqueue(url, [_task("a@example.com", 1)])
            wait_until(lambda: smtp.task_ids() == [task_id], 10, "the email")
            assert worker.stop() == 0


def test_a_redis_restarted_without_persistence_is_named_in_one_warning(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with running(WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path)) as worker:
        with volatile_redis(tmp_path / "redis", port):
            worker.wait_for_log("worker_started")
            first = enqueue(url, [_task("a@example.com", 1)])
            wait_until(lambda: smtp.task_ids() == first, 10, "the first email")
        # The same port, nothing on disk: the stream and the group are gone.
        with volatile_redis(tmp_path / "redis", port):
            worker.wait_for_log("queue_vanished", timeout=30)
            second = enqueue(url, [_task("b@example.com", 2)])
            wait_until(lambda: smtp.task_ids() == first + second, 20, "the second email")
            assert worker.stop() == 0
    (warning,) = events(worker, "queue_vanished")
    assert warning["level"] == "warning"
    assert warning["stream"] == STREAM
    assert "restarted without persistence" in str(warning["problem"])
