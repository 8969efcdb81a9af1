"""The status ledger with a real worker (a subprocess) and a real SMTP server: what a producer
sees through a task's life, and cancels racing the workers that claim the same tasks."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import redis as redis_sync

from service import EmailTask, SyncProducer, TaskState, TaskStatus
from service.keys import QueueKeys
from service.local.redis_server import RedisServer
from tests.conftest import as_entries, pending_count, wait_until
from tests.integration.test_admin import admin
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

KEYS = QueueKeys("emails")


def _states_until(
    producer: SyncProducer, task_id: str, final: TaskState, timeout: float
) -> list[TaskStatus]:
    """Every distinct status seen while polling `task_id` until it reaches `final`."""
    seen: list[TaskStatus] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = producer.status(task_id)
        if not seen or status.state is not seen[-1].state:
            seen.append(status)
        if status.state is final:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"{task_id} never reached {final}: {[s.state for s in seen]}")


def test_queued_sending_sent(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.data_delay = 1.0  # long enough to see the task being sent
    with SyncProducer.from_url(redis_server.url) as producer:
        task_id = producer.enqueue(EmailTask(to="a@example.com", subject="s", text="x"))
        assert producer.status(task_id).state is TaskState.QUEUED
        start_worker()  # returns once it started, by when it may have taken the task
        seen = _states_until(producer, task_id, TaskState.SENT, 15)
    assert [status.state for status in seen][-2:] == [TaskState.SENDING, TaskState.SENT]
    assert seen[0].state in (TaskState.QUEUED, TaskState.SENDING)
    sent = seen[-1]
    assert sent.attempts == 0
    assert sent.changed_at is not None
    assert abs(sent.changed_at - datetime.now(UTC)) < timedelta(seconds=10)
    assert sent.reply == "SMTP 250 OK queued"  # the server's answer to the message
    assert smtp.task_ids() == [task_id]


def test_retrying_then_dead_with_the_replies(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.rcpt_replies = {
        "b@example.com": ["451 4.3.0 try again later", "550 5.1.1 no such user"]
    }
    start_worker(WORKER_RETRY_BASE_SECONDS="2", WORKER_RETRY_MAX_SECONDS="2")
    with SyncProducer.from_url(redis_server.url) as producer:
        task_id = producer.enqueue(
            EmailTask(to="b@example.com", subject="s", text="x", tags=["t1"])
        )
        seen = _states_until(producer, task_id, TaskState.DEAD, 20)
    retrying = next(status for status in seen if status.state is TaskState.RETRYING)
    assert retrying.attempts == 1
    assert "451 4.3.0 try again later" in retrying.reply
    assert retrying.due_at is not None
    assert retrying.changed_at is not None
    assert timedelta(seconds=0.9) <= retrying.due_at - retrying.changed_at <= timedelta(seconds=2.1)
    dead = seen[-1]
    assert dead.attempts == 2
    assert "550 5.1.1 no such user" in dead.reason
    assert dead.tags == ("t1",)
    assert smtp.received == []


def test_requeued_from_the_dead_letters_then_sent(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.rcpt_replies = {"c@example.com": ["550 5.1.1 no such user"]}
    start_worker()
    with SyncProducer.from_url(redis_server.url) as producer:
        task_id = producer.enqueue(EmailTask(to="c@example.com", subject="s", text="x"))
        _states_until(producer, task_id, TaskState.DEAD, 15)
        ((dead_id, _),) = as_entries(db.xrange(KEYS.dead))
        requeued = admin(redis_server.url, "dead", "requeue", dead_id.decode())
        assert requeued.returncode == 0, requeued.stderr
        seen = _states_until(producer, task_id, TaskState.SENT, 15)
    assert seen[0].state in (TaskState.QUEUED, TaskState.SENDING, TaskState.SENT)
    assert smtp.task_ids() == [task_id]


def test_cancels_racing_workers_either_cancel_or_send_each_task(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    """200 tasks, each cancelled while two workers claim and send them: for every task exactly
    one of the two happens, never both, never neither."""
    smtp.behaviour.data_delay = 0.01
    for _ in range(2):
        start_worker(WORKER_CONCURRENCY="5")
    rng = random.Random(14)  # noqa: S311 - timings for a test, not a secret
    results = {}
    with SyncProducer.from_url(redis_server.url) as producer:
        for batch in range(8):
            # 25 at once (the workers take 10 at a time), due now or a moment ahead (cancelled
            # around their promotion), each cancelled after a random short wait.
            tasks = [
                EmailTask(to="r@example.com", subject=f"race {batch}.{i}", text="x")
                for i in range(25)
            ]
            delay = timedelta(seconds=rng.choice([0, 0, 0.05, 0.2]))
            task_ids = producer.enqueue_many(tasks, delay=delay)
            if batch % 2:
                task_ids.reverse()  # the newest first: the workers reach them last
            for task_id in task_ids:
                time.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02]))
                results[task_id] = producer.cancel(task_id)
        ids = list(results)

        def settled() -> bool:
            return (
                db.xlen(KEYS.stream) == 0
                and db.zcard(KEYS.delayed) == 0
                and (pending_count(db) == 0)
            )

        wait_until(settled, 30, "every task settled")
        wait_until(lambda: len(smtp.task_ids()) >= sum(not r.cancelled for r in results.values()),
                   10, "the sends")  # fmt: skip
        final = {task_id: producer.status(task_id).state for task_id in ids}

    sent = Counter(smtp.task_ids())
    cancelled = {task_id for task_id, result in results.items() if result.cancelled}
    for task_id in ids:
        if task_id in cancelled:
            assert sent[task_id] == 0, f"{task_id} was cancelled and sent"
            assert final[task_id] is TaskState.CANCELLED
        else:
            assert sent[task_id] == 1, f"{task_id} was neither cancelled nor sent once"
            assert final[task_id] is TaskState.SENT
            assert results[task_id].was in (TaskState.SENDING, TaskState.SENT)
    assert set(sent) <= set(ids)
    assert db.xlen(KEYS.dead) == 0
    # Both outcomes were exercised, cancels of queued and of scheduled tasks among them, or the
    # race proved nothing.
    assert 0 < len(cancelled) < len(ids), len(cancelled)
    assert {r.was for r in results.values()} >= {TaskState.QUEUED, TaskState.SCHEDULED}
