"""The worker's Redis operations on a real server: claims, deleted entries, atomic fate writes."""

from __future__ import annotations

from redis.asyncio import Redis

from service.keys import CONSUMER_GROUP, QueueKeys
from service.worker.stream import TaskStream
from tests.conftest import as_entries

KEYS = QueueKeys("emails")


async def _stream(redis: Redis, consumer: str = "me") -> TaskStream:
    stream = TaskStream(redis, KEYS, consumer)
    await stream.ensure_group()
    return stream


async def test_ensure_group_is_idempotent_and_sees_earlier_entries(redis: Redis) -> None:
    await redis.xadd(KEYS.stream, {"v": "1"})
    stream = await _stream(redis)
    await stream.ensure_group()
    (entry,) = await stream.read_new(10, block_ms=10)
    assert (entry.fields, entry.deliveries) == ({b"v": b"1"}, 1)


async def test_ack_removes_the_entry_from_stream_and_pending_list(redis: Redis) -> None:
    stream = await _stream(redis)
    await redis.xadd(KEYS.stream, {"v": "1"})
    await redis.xadd(KEYS.stream, {"v": "2"})
    entries = await stream.read_new(10, block_ms=10)
    await stream.ack([entry.entry_id for entry in entries])
    assert await redis.xlen(KEYS.stream) == 0
    assert (await redis.xpending(KEYS.stream, CONSUMER_GROUP))["pending"] == 0


async def test_dead_letter_moves_the_entry_with_its_story(redis: Redis) -> None:
    stream = await _stream(redis)
    await redis.xadd(KEYS.stream, {"v": "1", "task": "x"})
    (entry,) = await stream.read_new(1, block_ms=10)
    await stream.dead_letter(entry, "SMTP 550 no such user")
    assert await redis.xlen(KEYS.stream) == 0
    assert (await redis.xpending(KEYS.stream, CONSUMER_GROUP))["pending"] == 0
    ((_, dead),) = as_entries(await redis.xrange(KEYS.dead))
    assert dead[b"task"] == b"x"
    assert dead[b"dead_reason"] == b"SMTP 550 no such user"
    assert dead[b"dead_entry_id"] == entry.entry_id.encode()
    assert (dead[b"dead_deliveries"], dead[b"dead_consumer"]) == (b"1", b"me")


async def test_claim_stale_takes_idle_entries_and_counts_deliveries(redis: Redis) -> None:
    crashed, survivor = await _stream(redis, "crashed"), await _stream(redis, "survivor")
    for n in range(3):
        await redis.xadd(KEYS.stream, {"n": str(n)})
    await crashed.read_new(10, block_ms=10)
    cursor, none_yet = await survivor.claim_stale(min_idle_ms=60_000, cursor="0-0", count=10)
    assert none_yet == []
    cursor, claimed = await survivor.claim_stale(min_idle_ms=0, cursor="0-0", count=10)
    assert cursor == "0-0"
    assert [(e.fields[b"n"], e.deliveries) for e in claimed] == [(b"0", 2), (b"1", 2), (b"2", 2)]


async def test_entries_deleted_while_pending_are_skipped(redis: Redis) -> None:
    crashed, survivor = await _stream(redis, "crashed"), await _stream(redis, "survivor")
    kept = await redis.xadd(KEYS.stream, {"n": "kept"})
    deleted = await redis.xadd(KEYS.stream, {"n": "deleted"})
    await crashed.read_new(10, block_ms=10)
    await redis.xdel(KEYS.stream, deleted)
    _, claimed = await survivor.claim_stale(min_idle_ms=0, cursor="0-0", count=10)
    assert [e.entry_id.encode() for e in claimed] == [kept]


async def test_take_own_pending_resumes_this_consumer_only(redis: Redis) -> None:
    mine, other = await _stream(redis, "box-1"), await _stream(redis, "box-2")
    await redis.xadd(KEYS.stream, {"n": "mine"})
    await mine.read_new(1, block_ms=10)
    await redis.xadd(KEYS.stream, {"n": "theirs"})
    await other.read_new(1, block_ms=10)
    gone = await redis.xadd(KEYS.stream, {"n": "gone"})
    await mine.read_new(1, block_ms=10)
    await redis.xdel(KEYS.stream, gone)
    (entry,) = await mine.take_own_pending(100)
    assert (entry.fields, entry.deliveries) == ({b"n": b"mine"}, 2)
    pending = await redis.xpending_range(KEYS.stream, CONSUMER_GROUP, "-", "+", 10, "box-1")
    assert len(pending) == 1  # the deleted entry no longer lingers in the pending list
