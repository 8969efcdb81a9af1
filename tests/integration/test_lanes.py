"""The priority lanes on a real Redis: each lane its own stream, read in the order the worker
chooses, and every move of a task (retry, dead letter, requeue, reclaim, cancel) keeps its lane."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import orjson
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from service import CancelResult, EmailTask, Producer, SyncProducer, TaskState
from service.errors import QueueVanished
from service.keys import CONSUMER_GROUP, Lane, QueueKeys
from service.local.redis_server import RedisServer
from service.store import Entry, QueueStore
from service.wire import decode_entry
from service.worker import fate
from tests.conftest import enqueue
from tests.integration.test_admin import admin, admin_json
from tests.integration.test_producer import _cli

# Part of the inner-loop subset (`make test-fast`): real servers, but seconds in all.
pytestmark = pytest.mark.fast

KEYS = QueueKeys("emails")
HIGH_FIRST: tuple[Lane, ...] = ("high", "normal", "low")
LOW_FIRST: tuple[Lane, ...] = ("low", "high", "normal")


def _task(n: int, priority: Lane = "normal") -> EmailTask:
    return EmailTask(to="a@example.com", subject=f"#{n}", text="x", priority=priority)


def _subject(entry: Entry) -> str:
    return decode_entry(entry.fields).task.subject


async def _store(redis: Redis) -> QueueStore:
    store = QueueStore(redis, KEYS)
    await store.ensure_group()
    return store


async def test_each_priority_is_enqueued_into_its_lane(redis: Redis) -> None:
    producer = Producer(redis)
    await producer.enqueue_many([_task(1, "high"), _task(2), _task(3, "low"), _task(4, "low")])
    await producer.enqueue(_task(5, "high"))
    assert await redis.xlen("{emails}:stream:high") == 2
    assert await redis.xlen("{emails}:stream") == 1
    assert await redis.xlen("{emails}:stream:low") == 2
    sizes = await QueueStore(redis, KEYS).sizes()
    assert sizes.stream == 5
    assert sizes.lanes == {"high": 2, "normal": 1, "low": 2}


async def test_a_read_takes_the_lanes_in_order_up_to_its_count(redis: Redis) -> None:
    producer = Producer(redis)
    await producer.enqueue_many([_task(n, "low") for n in range(3)])
    await producer.enqueue_many([_task(n) for n in range(3, 6)])
    await producer.enqueue_many([_task(n, "high") for n in range(6, 9)])
    store = await _store(redis)

    first = await store.read_lanes("w", HIGH_FIRST, 4, 0)
    assert [(e.lane, _subject(e)) for e in first] == [
        ("high", "#6"),
        ("high", "#7"),
        ("high", "#8"),
        ("normal", "#3"),
    ]
    second = await store.read_lanes("w", LOW_FIRST, 2, 0)
    assert [(e.lane, _subject(e)) for e in second] == [("low", "#0"), ("low", "#1")]
    rest = await store.read_lanes("w", HIGH_FIRST, 10, 0)
    assert [(e.lane, _subject(e)) for e in rest] == [
        ("normal", "#4"),
        ("normal", "#5"),
        ("low", "#2"),
    ]
    assert await store.read_lanes("w", HIGH_FIRST, 10, 0) == []


async def test_order_within_a_lane_is_enqueue_order(redis: Redis) -> None:
    producer = Producer(redis)
    for n in range(30):
        await producer.enqueue(_task(n, "high" if n % 2 else "low"))
    store = await _store(redis)
    subjects: dict[str, list[int]] = {"high": [], "low": []}
    turn = 0
    while entries := await store.read_lanes("w", LOW_FIRST if turn % 3 else HIGH_FIRST, 4, 0):
        turn += 1
        for entry in entries:
            subjects[entry.lane].append(int(_subject(entry)[1:]))
    assert subjects == {"high": list(range(1, 30, 2)), "low": list(range(0, 30, 2))}


async def test_a_blocked_read_wakes_for_an_entry_in_any_lane(redis: Redis) -> None:
    store = await _store(redis)
    producer = Producer(redis)
    await producer.enqueue(_task(0, "high"))
    (held,) = await store.read_lanes("w", HIGH_FIRST, 10, 0)  # pending: not new any more
    assert held.lane == "high"
    started = time.monotonic()
    read = asyncio.create_task(store.read_lanes("w", HIGH_FIRST, 10, 5_000))
    await asyncio.sleep(0.1)
    assert not read.done()
    await producer.enqueue(_task(1, "low"))
    (entry,) = await asyncio.wait_for(read, 3)
    assert (entry.lane, _subject(entry)) == ("low", "#1")
    assert time.monotonic() - started < 2


async def test_a_retry_and_a_dead_letter_keep_the_lane_and_a_requeue_returns_to_it(
    redis: Redis,
) -> None:
    producer = Producer(redis)
    task_id = await producer.enqueue(_task(1, "high"))
    store = await _store(redis)
    (entry,) = await store.read_lanes("w", LOW_FIRST, 10, 0)
    queued = decode_entry(entry.fields)
    now_ms = int(time.time() * 1000)

    held = fate.hold(entry, queued, "the worker stops", due_ms=now_ms)
    assert (await store.settle(held.write)).took_effect
    assert await redis.xlen(KEYS.lane("high")) == 0
    assert await store.promote_due(now_ms + 1, 10) == (1, None)
    assert await redis.xlen(KEYS.lane("high")) == 1
    assert await redis.xlen(KEYS.stream) == 0
    assert (await producer.status(task_id)).state is TaskState.QUEUED

    (retry,) = await store.read_lanes("w", LOW_FIRST, 10, 0)
    assert retry.lane == "high"
    assert (await producer.status(task_id)).state is TaskState.SENDING
    dead = fate.give_up(retry, decode_entry(retry.fields), "550 no", consumer="w", now_ms=now_ms)
    assert (await store.settle(dead.write)).took_effect
    ((dead_id, record),) = await store.dead_letters(after="-", count=10)
    assert record[b"lane"] == b"high"
    assert await redis.xlen(KEYS.lane("high")) == 0

    assert await store.requeue_dead(dead_id, task_id) is not None
    assert await redis.xlen(KEYS.lane("high")) == 1
    assert (await producer.status(task_id)).state is TaskState.QUEUED
    (requeued,) = await store.read_lanes("w", LOW_FIRST, 10, 0)
    assert (requeued.lane, decode_entry(requeued.fields).task_id) == ("high", task_id)


async def test_status_and_cancel_find_the_task_in_its_lane(redis: Redis) -> None:
    producer = Producer(redis)
    low_id, high_id = await producer.enqueue_many([_task(1, "low"), _task(2, "high")])
    store = await _store(redis)
    # One entry handed out: the high one, which is then being sent.
    (entry,) = await store.read_lanes("w", HIGH_FIRST, 1, 0)
    assert entry.lane == "high"
    assert (await producer.status(high_id)).state is TaskState.SENDING
    assert (await producer.status(low_id)).state is TaskState.QUEUED
    assert await producer.cancel(high_id) == CancelResult(high_id, False, TaskState.SENDING)
    assert await producer.cancel(low_id) == CancelResult(low_id, True, TaskState.QUEUED)
    assert await redis.xlen(KEYS.lane("low")) == 0
    assert await store.read_lanes("w", LOW_FIRST, 10, 0) == []


async def test_a_dead_consumer_entries_are_reclaimed_in_their_lane(redis: Redis) -> None:
    producer = Producer(redis)
    await producer.enqueue_many([_task(1, "high"), _task(2, "low"), _task(3)])
    store = await _store(redis)
    assert len(await store.read_lanes("crashed", HIGH_FIRST, 10, 0)) == 3
    assert not await store.forget_consumer("crashed")  # it owns entries in every lane
    claimed = {}
    for lane in ("high", "normal", "low"):
        cursor, entries = await store.claim_stale("rescuer", 0, "0-0", 10, lane)
        assert cursor == "0-0"
        claimed[lane] = [(e.lane, _subject(e), e.deliveries) for e in entries]
    assert claimed == {
        "high": [("high", "#1", 2)],
        "normal": [("normal", "#3", 2)],
        "low": [("low", "#2", 2)],
    }
    assert await store.forget_consumer("crashed")
    own = await store.take_own_pending("rescuer", 10)
    assert [(e.lane, _subject(e)) for e in own] == [("high", "#1"), ("normal", "#3"), ("low", "#2")]


async def test_a_queue_from_before_lanes_keeps_working(redis: Redis) -> None:
    # What an earlier release left: entries in the stream without a lane field, and the group
    # on that stream only.
    await redis.xgroup_create(KEYS.stream, CONSUMER_GROUP, id="0", mkstream=True)
    producer = Producer(redis)
    await producer.enqueue_many([_task(1), _task(2), _task(3)])
    store = QueueStore(redis, KEYS)
    # The lanes that do not exist yet hold nothing: the normal one is read as before.
    (first,) = await store.read_lanes("w", HIGH_FIRST, 1, 0)
    assert (first.lane, _subject(first), b"lane" in first.fields) == ("normal", "#1", False)
    assert [e.entry_id for e in await store.take_own_pending("w", 10)] == [first.entry_id]
    assert await store.claim_stale("w", 0, "0-0", 10, "high") == ("0-0", [])
    # A high task made its lane's stream, without the group: the worker makes the group.
    await producer.enqueue(_task(4, "high"))
    with pytest.raises(QueueVanished):
        await store.read_lanes("w", HIGH_FIRST, 10, 0)
    assert not await store.ensure_group()  # the normal lane's group was there already
    entries = await store.read_lanes("w", HIGH_FIRST, 10, 0)
    assert [(e.lane, _subject(e)) for e in entries] == [
        ("high", "#4"),
        ("normal", "#2"),
        ("normal", "#3"),
    ]


def test_admin_stats_show_each_lane_backlog(
    redis_server: RedisServer,
    db: redis_sync.Redis,  # an empty database
) -> None:
    tasks = [_task(1, "high"), _task(2, "low"), _task(3, "low"), _task(4)]
    enqueue(redis_server.url, tasks)
    stats = admin_json(redis_server.url, "stats")
    assert isinstance(stats, dict)
    assert stats["stream"] == 4
    assert stats["lanes"] == {"high": 1, "normal": 1, "low": 2}
    text = admin(redis_server.url, "stats").stdout
    assert "low priority lane" in text


def test_the_producer_cli_takes_a_priority(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    one = _cli(redis_server.url, "--to", "a@example.com", "--text", "x", "--priority", "high")
    assert one.returncode == 0, one.stderr
    lines = [
        orjson.dumps(
            {"to": "a@example.com", "subject": "s", "text": "x", "priority": "high"}
        ).decode(),
        orjson.dumps({"to": "a@example.com", "subject": "s", "text": "x"}).decode(),
    ]
    batch = _cli(redis_server.url, "--jsonl", "--priority", "low", stdin="\n".join(lines))
    assert batch.returncode == 0, batch.stderr
    plain = _cli(redis_server.url, "--to", "a@example.com", "--text", "x")
    assert plain.returncode == 0, plain.stderr
    assert [db.xlen(KEYS.lane(lane)) for lane in ("high", "normal", "low")] == [2, 1, 1]
    refused = _cli(redis_server.url, "--to", "a@example.com", "--text", "x", "--priority", "top")
    assert refused.returncode == 2
    assert "--priority: invalid choice: 'top'" in refused.stderr


@pytest.mark.parametrize("status_ttl", [timedelta(days=1), timedelta(0)])
async def test_both_producers_put_each_priority_in_its_lane_on_every_path(
    redis: Redis, redis_server: RedisServer, status_ttl: timedelta
) -> None:
    # Without status records a plain enqueue far below the backlog limit skips the script
    # (`add_now`): one XADD, or a MULTI/EXEC batch.
    producer = Producer(redis, status_ttl=status_ttl)
    await producer.enqueue(_task(1, "high"))
    await producer.enqueue_many([_task(2, "low"), _task(3), _task(4, "high")])
    with SyncProducer.from_url(redis_server.url, status_ttl=status_ttl) as sync:
        sync.enqueue(_task(5, "low"))
        sync.enqueue_many([_task(6, "high"), _task(7, "low")])
    lengths = [await redis.xlen(KEYS.lane(lane)) for lane in ("high", "normal", "low")]
    assert lengths == [3, 1, 3]
