"""The status ledger and cancel on a real Redis: every step that moves a task notes where it is,
in the same script, and a cancel either takes the task out for good or says why not."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from service import (
    CancelResult,
    EmailTask,
    Producer,
    QueueFull,
    QueueUnavailable,
    SyncProducer,
    TaskState,
)
from service.keys import LANES, Lane, QueueKeys
from service.local.redis_server import RedisServer
from service.producer.prepare import DEFAULT_MAX_EMAIL_BYTES, new_tasks
from service.store import NewTask, QueueStore, RetryCopy, SettleWrite, StatusNote

# Part of the inner-loop subset (`make test-fast`): real servers, but seconds in all.
pytestmark = pytest.mark.fast

KEYS = QueueKeys("emails")
TASK = EmailTask(to="a@example.com", subject="Hi", text="x", tags=["welcome", "user:42"])


async def _worker_reads(store: QueueStore, count: int = 10) -> list[tuple[str, str]]:
    """What a worker does before sending: read new entries. (entry id, task id) pairs."""
    await store.ensure_group()
    entries = await store.read_lanes("w1", LANES, count, 10)
    return [(entry.entry_id, entry.fields[b"id"].decode()) for entry in entries]


async def test_queued_then_sending_then_sent(redis: Redis) -> None:
    producer = Producer(redis)
    store = QueueStore(redis, KEYS)
    task_id = await producer.enqueue(TASK)
    queued = await producer.status(task_id)
    assert queued.state is TaskState.QUEUED
    assert queued.tags == ("welcome", "user:42")
    assert queued.changed_at is not None
    assert abs(queued.changed_at - datetime.now(UTC)) < timedelta(seconds=5)

    ((entry_id, read_id),) = await _worker_reads(store)
    assert read_id == task_id
    sending = await producer.status(task_id)
    assert sending.state is TaskState.SENDING

    sent_note = StatusNote("sent", text="250 2.0.0 Ok: queued as ABC123")
    write = SettleWrite(entry_id, task_id, sent_record=True, status=sent_note)
    await store.settle(write)
    sent = await producer.status(task_id)
    assert (sent.state, sent.reply, sent.tags) == (TaskState.SENT, sent_note.text, queued.tags)
    assert (await producer.cancel(task_id)) == CancelResult(task_id, False, TaskState.SENT)


async def test_scheduled_then_cancelled_is_never_promoted(redis: Redis) -> None:
    producer = Producer(redis)
    store = QueueStore(redis, KEYS)
    send_at = datetime.now(UTC) + timedelta(seconds=30)
    task_id = await producer.enqueue(TASK, send_at=send_at)
    scheduled = await producer.status(task_id)
    assert scheduled.state is TaskState.SCHEDULED
    assert scheduled.due_at is not None
    assert abs(scheduled.due_at - send_at) < timedelta(milliseconds=2)

    assert await producer.cancel(task_id) == CancelResult(task_id, True, TaskState.SCHEDULED)
    assert (await producer.status(task_id)).state is TaskState.CANCELLED
    assert await redis.zcard(KEYS.delayed) == 0
    assert await redis.hlen(KEYS.delayed_entries) == 0
    far_future = int((send_at + timedelta(days=1)).timestamp() * 1000)
    assert await store.promote_due(far_future, 100) == (0, None)
    assert await redis.xlen(KEYS.stream) == 0
    # A second cancel says it is already cancelled.
    assert await producer.cancel(task_id) == CancelResult(task_id, False, TaskState.CANCELLED)


async def test_a_queued_task_nobody_read_is_cancelled_and_never_handed_out(redis: Redis) -> None:
    producer = Producer(redis)
    store = QueueStore(redis, KEYS)
    first, second = await producer.enqueue_many([TASK, TASK])
    # No worker ever started: no consumer group yet.
    assert await producer.cancel(first) == CancelResult(first, True, TaskState.QUEUED)
    assert [task_id for _, task_id in await _worker_reads(store)] == [second]
    assert (await producer.status(first)).state is TaskState.CANCELLED
    # The other one is held by a worker now: too late to cancel.
    assert await producer.cancel(second) == CancelResult(second, False, TaskState.SENDING)
    assert (await producer.status(second)).state is TaskState.SENDING


async def test_retrying_then_dead_then_requeued(redis: Redis) -> None:
    producer = Producer(redis)
    store = QueueStore(redis, KEYS)
    task_id = await producer.enqueue(TASK)
    ((entry_id, _),) = await _worker_reads(store)
    due_ms = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp() * 1000)
    fields = {b"v": b"1", b"id": task_id.encode()}
    note = StatusNote("retrying", attempts=1, text="SMTP 451 4.3.0 try later")
    await store.settle(SettleWrite(entry_id, task_id, retry=RetryCopy(due_ms, fields), status=note))
    retrying = await producer.status(task_id)
    assert retrying.state is TaskState.RETRYING
    assert (retrying.attempts, retrying.reply) == (1, note.text)
    assert retrying.due_at is not None
    assert int(retrying.due_at.timestamp() * 1000) == due_ms

    # Promoted when due: queued again (a new entry), then read, then dead.
    assert (await store.promote_due(due_ms, 10))[0] == 1
    assert (await producer.status(task_id)).state is TaskState.QUEUED
    ((entry_id, _),) = await _worker_reads(store)
    assert (await producer.status(task_id)).state is TaskState.SENDING
    dead_note = StatusNote("dead", attempts=2, text="SMTP 550 5.1.1 no such user")
    await store.settle(
        SettleWrite(entry_id, task_id, dead={b"id": fields[b"id"]}, status=dead_note)
    )
    dead = await producer.status(task_id)
    assert (dead.state, dead.attempts, dead.reason) == (TaskState.DEAD, 2, dead_note.text)
    assert await producer.cancel(task_id) == CancelResult(task_id, False, TaskState.DEAD)

    ((dead_id, _),) = await store.dead_letters(after="-", count=10)
    assert await store.requeue_dead(dead_id, task_id) is not None
    requeued = await producer.status(task_id)
    assert (requeued.state, requeued.attempts, requeued.tags) == (
        TaskState.QUEUED,
        0,
        tuple(TASK.tags),
    )


async def test_a_record_expires_after_its_ttl_but_not_before_its_due_time(redis: Redis) -> None:
    producer = Producer(redis, status_ttl=timedelta(milliseconds=300))
    now_id = await producer.enqueue(TASK)
    later_id = await producer.enqueue(TASK, delay=timedelta(seconds=2))
    await asyncio.sleep(0.6)
    assert (await producer.status(now_id)).state is TaskState.UNKNOWN
    assert (await producer.status(later_id)).state is TaskState.SCHEDULED
    # Unknown: nothing to cancel, and nothing written.
    assert await producer.cancel(now_id) == CancelResult(now_id, False, TaskState.UNKNOWN)
    assert await redis.exists(KEYS.status(now_id)) == 0


async def test_unknown_ids(redis: Redis) -> None:
    producer = Producer(redis)
    never_seen = uuid.uuid4().hex
    assert (await producer.status(never_seen)).state is TaskState.UNKNOWN
    assert (await producer.status("not a task id")).state is TaskState.UNKNOWN
    assert await producer.cancel("{emails}:stream") == CancelResult(
        "{emails}:stream", False, TaskState.UNKNOWN
    )


async def test_without_a_ttl_no_record_is_written_and_scheduled_tasks_still_cancel(
    redis: Redis,
) -> None:
    producer = Producer(redis, status_ttl=timedelta(0))
    task_id = await producer.enqueue(TASK)
    later_id = await producer.enqueue(TASK, delay=timedelta(minutes=5))
    assert await redis.keys(KEYS.status("*")) == []
    assert (await producer.status(task_id)).state is TaskState.UNKNOWN
    assert await producer.cancel(later_id) == CancelResult(later_id, True, TaskState.SCHEDULED)
    assert await redis.zcard(KEYS.delayed) == 0


def test_the_sync_producer_reads_and_cancels_as_the_async_one(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    with SyncProducer.from_url(redis_server.url) as producer:
        task_id = producer.enqueue(TASK)
        later_id = producer.enqueue(TASK, delay=timedelta(minutes=5))
        assert producer.status(task_id).state is TaskState.QUEUED
        assert producer.status(later_id).tags == ("welcome", "user:42")
        assert producer.cancel(later_id) == CancelResult(later_id, True, TaskState.SCHEDULED)
        assert producer.cancel(task_id) == CancelResult(task_id, True, TaskState.QUEUED)
        assert producer.status(task_id).state is TaskState.CANCELLED
    assert db.xlen(KEYS.stream) == 0
    assert db.zcard(KEYS.delayed) == 0


async def test_at_maxmemory_cancels_and_plain_acks_still_note_their_status(redis: Redis) -> None:
    producer = Producer(redis)
    store = QueueStore(redis, KEYS)
    later_id = await producer.enqueue(TASK, delay=timedelta(minutes=5))
    sent_id = await producer.enqueue(TASK)
    ((entry_id, _),) = await _worker_reads(store)
    await redis.config_set("maxmemory", "1")
    try:
        # What adds data is refused whole: no entry, no record.
        with pytest.raises(QueueFull):
            await producer.enqueue(TASK)
        # A cancel and an acknowledgement free memory first, then note the status.
        assert await producer.cancel(later_id) == CancelResult(later_id, True, TaskState.SCHEDULED)
        write = SettleWrite(entry_id, sent_id, status=StatusNote("sent", text="250 ok"))
        assert (await store.settle(write)).took_effect
    finally:
        await redis.config_set("maxmemory", "0")
    assert (await producer.status(later_id)).state is TaskState.CANCELLED
    assert (await producer.status(sent_id)).state is TaskState.SENT
    assert len(await redis.keys(KEYS.status("*"))) == 2


async def test_a_send_that_lost_its_settle_race_stays_sent_through_the_retry_copy(
    redis: Redis,
) -> None:
    """Worker 1 stalls past the reclaim time; worker 2 takes the entry over, fails and schedules
    a retry; then worker 1's send turns out accepted. The task was sent: its status says so,
    through the retry copy's promotion, and a cancel cannot claim it."""
    producer = Producer(redis)
    store = QueueStore(redis, KEYS)
    task_id = await producer.enqueue(TASK)
    ((entry_id, _),) = await _worker_reads(store)
    _, taken = await store.claim_stale("w2", 0, "0-0", 10)
    assert [entry.entry_id for entry in taken] == [entry_id]
    due_ms = int(datetime.now(UTC).timestamp() * 1000)
    retry = RetryCopy(due_ms, {b"v": b"1", b"id": task_id.encode()})
    note = StatusNote("retrying", attempts=1, text="SMTP 451")
    assert (
        await store.settle(SettleWrite(entry_id, task_id, retry=retry, status=note))
    ).took_effect
    late = SettleWrite(entry_id, task_id, sent_record=True, status=StatusNote("sent", text="250"))
    assert not (await store.settle(late)).took_effect
    assert (await producer.status(task_id)).state is TaskState.SENT

    assert (await store.promote_due(due_ms, 10))[0] == 1
    assert (await producer.status(task_id)).state is TaskState.SENT
    assert await producer.cancel(task_id) == CancelResult(task_id, False, TaskState.SENT)
    assert await redis.xlen(KEYS.stream) == 1  # the copy, which the worker will skip


def _new(*tasks: EmailTask) -> list[NewTask]:
    return new_tasks(tasks, queue=KEYS.queue, max_email_bytes=DEFAULT_MAX_EMAIL_BYTES)


@pytest.mark.parametrize("priority", ["normal", "high", "low"])
async def test_the_plain_path_writes_the_record_the_enqueue_script_writes(
    redis: Redis, priority: Lane
) -> None:
    # The producer's plain path (ADD_NOW) and the checked one (ENQUEUE) must leave the same
    # record: state, lane, tags and expiry; the entry id and the time are each task's own.
    store = QueueStore(redis, KEYS, status_ttl=timedelta(hours=1))
    task = TASK.model_copy(update={"priority": priority})
    (plain,), (checked,) = _new(task), _new(task)
    await store.add_now([plain])
    await store.enqueue([checked], max_backlog=0, window_ms=1)
    records = [await redis.hgetall(KEYS.status(t.task_id)) for t in (plain, checked)]
    for record, task_id in zip(records, (plain.task_id, checked.task_id), strict=True):
        entries: Any = await redis.xrange(KEYS.lane(priority), record[b"e"], record[b"e"])
        assert entries[0][1][b"id"] == task_id.encode()  # the entry id is the task's entry
        del record[b"e"], record[b"at"]
    assert records[0] == records[1]
    assert records[0][b"s"] == b"queued"
    ttls = [await redis.pttl(KEYS.status(t.task_id)) for t in (plain, checked)]
    assert all(3_590_000 < ttl <= 3_600_000 for ttl in ttls)


async def test_a_record_of_the_wrong_type_stops_a_plain_batch_before_any_write(
    redis: Redis,
) -> None:
    store = QueueStore(redis, KEYS)
    first, second = _new(TASK, TASK)
    await redis.set(KEYS.status(second.task_id), "not a hash")
    with pytest.raises(QueueUnavailable, match="WRONGTYPE"):
        await store.add_now([first, second])
    assert await redis.exists(KEYS.stream, KEYS.status(first.task_id)) == 0
