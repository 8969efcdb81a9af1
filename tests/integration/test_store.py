"""The queue's store on a real server: claims, deleted entries, atomic fate writes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.errors import RedisFull
from service.keys import CONSUMER_GROUP, LANES, QueueKeys
from service.store import (
    SENT_RECORD_TTL_MS,
    Entry,
    QueueSizes,
    QueueStore,
    RetryCopy,
    SettleReply,
    SettleWrite,
)
from service.store.replies import as_str, claimed_entries
from tests.conftest import as_entries

# Part of the inner-loop subset (`make test-fast`): real servers, but seconds in all.
pytestmark = pytest.mark.fast

KEYS = QueueKeys("emails")


class Consumer:
    """The store as one consumer uses it (the worker passes its name to every call)."""

    def __init__(self, redis: Redis, name: str) -> None:
        self.store = QueueStore(redis, KEYS)
        self.name = name

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return await self.store.read_lanes(self.name, LANES, count, block_ms)

    async def claim_stale(
        self, *, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        return await self.store.claim_stale(self.name, min_idle_ms, cursor, count)

    async def take_own_pending(self, count: int) -> list[Entry]:
        return await self.store.take_own_pending(self.name, count)

    async def settle(
        self,
        entry: Entry,
        *,
        task_id: str = "",
        sent_record: bool = False,
        retry: tuple[int, Mapping[bytes, bytes]] | None = None,
        dead: Mapping[bytes, bytes] | None = None,
    ) -> SettleReply:
        copy = RetryCopy(*retry) if retry else None
        write = SettleWrite(entry.entry_id, task_id, sent_record, copy, dead)
        return await self.store.settle(write)

    async def forget_consumer(self) -> bool:
        return await self.store.forget_consumer(self.name)

    async def was_sent(self, task_id: str) -> bool:
        return await self.store.was_sent(task_id)

    async def promote_due(self, now_ms: int, limit: int) -> tuple[int, int | None]:
        return await self.store.promote_due(now_ms, limit)

    async def sizes(self) -> QueueSizes:
        return await self.store.sizes()


async def _stream(redis: Redis, consumer: str = "me") -> Consumer:
    stream = Consumer(redis, consumer)
    await stream.store.ensure_group()
    return stream


async def test_ensure_group_is_idempotent_and_sees_earlier_entries(redis: Redis) -> None:
    await redis.xadd(KEYS.stream, {"v": "1"})
    stream = await _stream(redis)
    await stream.store.ensure_group()
    (entry,) = await stream.read_new(10, block_ms=10)
    assert (entry.fields, entry.deliveries) == ({b"v": b"1"}, 1)


async def test_settle_acknowledges_and_deletes(redis: Redis) -> None:
    stream = await _stream(redis)
    await redis.xadd(KEYS.stream, {"v": "1"})
    await redis.xadd(KEYS.stream, {"v": "2"})
    for entry in await stream.read_new(10, block_ms=10):
        settled = await stream.settle(entry, task_id="t")
        assert (settled.took_effect, settled.dead_letters) == (True, 0)
    assert await redis.xlen(KEYS.stream) == 0
    assert (await redis.xpending(KEYS.stream, CONSUMER_GROUP))["pending"] == 0
    assert await redis.exists(KEYS.sent("t")) == 0  # no race, no sent record


async def test_settle_dead_letter_moves_the_entry_with_its_story(redis: Redis) -> None:
    stream = await _stream(redis)
    await redis.xadd(KEYS.stream, {"v": "1", "task": "x"})
    (entry,) = await stream.read_new(1, block_ms=10)
    record = {**entry.fields, b"dead_reason": b"SMTP 550 no such user"}
    settled = await stream.settle(entry, task_id="t", dead=record)
    assert (settled.took_effect, settled.dead_letters) == (True, 1)
    assert await redis.xlen(KEYS.stream) == 0
    assert (await redis.xpending(KEYS.stream, CONSUMER_GROUP))["pending"] == 0
    ((_, dead),) = as_entries(await redis.xrange(KEYS.dead))
    assert dead == {b"v": b"1", b"task": b"x", b"dead_reason": b"SMTP 550 no such user"}


async def test_settle_retry_parks_a_copy_until_due_then_promotes_it(redis: Redis) -> None:
    stream = await _stream(redis)
    await redis.xadd(KEYS.stream, {"v": "1", "id": "t1"})
    (entry,) = await stream.read_new(1, block_ms=10)
    copy = {b"v": b"1", b"id": b"t1", b"tries": b"1", b"bin": bytes(range(256))}
    await stream.settle(entry, task_id="t1", retry=(5_000, copy))
    assert await redis.xlen(KEYS.stream) == 0
    assert await redis.zscore(KEYS.delayed, "t1") == 5_000
    assert await stream.promote_due(4_999, 100) == (0, 5_000)
    assert await stream.promote_due(5_000, 100) == (1, None)
    ((_, promoted),) = as_entries(await redis.xrange(KEYS.stream))
    assert promoted == copy  # field for field, binary values included
    assert await redis.zcard(KEYS.delayed) == 0
    assert await redis.hlen(KEYS.delayed_entries) == 0


async def test_promote_moves_in_due_order_in_batches(redis: Redis) -> None:
    stream = await _stream(redis)
    for n, due in enumerate([300, 100, 200, 900]):
        await redis.xadd(KEYS.stream, {"n": str(n)})
        (entry,) = await stream.read_new(1, block_ms=10)
        await stream.settle(entry, task_id=f"t{n}", retry=(due, {b"n": str(n).encode()}))
    assert await stream.promote_due(500, 2) == (2, 300)
    assert await stream.promote_due(500, 2) == (1, 900)
    promoted = [fields[b"n"] for _, fields in as_entries(await redis.xrange(KEYS.stream))]
    assert promoted == [b"1", b"2", b"0"]


async def test_only_the_first_settle_of_an_entry_takes_effect(redis: Redis) -> None:
    # A stalled worker and the one that reclaimed its entry both settle it.
    stalled, rescuer = await _stream(redis, "stalled"), await _stream(redis, "rescuer")
    await redis.xadd(KEYS.stream, {"v": "1"})
    (entry,) = await stalled.read_new(1, block_ms=10)
    _, (reclaimed,) = await rescuer.claim_stale(min_idle_ms=0, cursor="0-0", count=1)
    first = await rescuer.settle(reclaimed, task_id="t", retry=(10**13, {b"v": b"1"}))
    late = await stalled.settle(entry, task_id="t", sent_record=True, dead={b"v": b"1"})
    assert (first.took_effect, late.took_effect) == (True, False)
    assert await redis.xlen(KEYS.dead) == 0  # the late settle added nothing
    assert await redis.zcard(KEYS.delayed) == 1
    # ...but since it had sent the email, it left a sent record for the retry copy to find.
    assert await stalled.was_sent("t")
    assert 0 < await redis.pttl(KEYS.sent("t")) <= SENT_RECORD_TTL_MS


async def test_forget_consumer_only_when_it_owns_nothing(redis: Redis) -> None:
    stream = await _stream(redis, "leaving")
    await redis.xadd(KEYS.stream, {"v": "1"})
    (entry,) = await stream.read_new(1, block_ms=10)
    assert not await stream.forget_consumer()
    assert [c["name"] for c in await redis.xinfo_consumers(KEYS.stream, CONSUMER_GROUP)] == [
        b"leaving"
    ]
    await stream.settle(entry, task_id="t")
    assert await stream.forget_consumer()
    assert await redis.xinfo_consumers(KEYS.stream, CONSUMER_GROUP) == []


async def test_sizes_counts_every_place(redis: Redis) -> None:
    stream = await _stream(redis)
    for n in range(3):
        await redis.xadd(KEYS.stream, {"n": str(n)})
    entries = await stream.read_new(2, block_ms=10)
    await stream.settle(entries[0], task_id="a", retry=(10**13, {b"n": b"0"}))
    await stream.settle(entries[1], task_id="b", dead={b"n": b"1"})
    sizes = await stream.sizes()
    assert (sizes.stream, sizes.delayed, sizes.dead) == (1, 1, 1)


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


async def test_forget_consumer_before_the_group_exists(redis: Redis) -> None:
    # A worker stopped while Redis was still coming up never created the group.
    assert not await Consumer(redis, "early").forget_consumer()


async def test_concurrent_settles_share_a_round_trip_each_with_its_own_reply(
    redis: Redis,
) -> None:
    stream = await _stream(redis)
    for i in range(20):
        await redis.xadd(KEYS.stream, {"v": "1", "n": str(i)})
    entries = await stream.read_new(20, block_ms=10)
    await redis.script_flush()  # the first batch meets NOSCRIPT, loads the script, goes again
    before = (await redis.info("stats"))["total_reads_processed"]
    dead = {b"dead_reason": b"550"}
    results = await asyncio.gather(
        *(stream.settle(e, task_id=f"t{i}", dead=dead if i % 2 else None)
          for i, e in enumerate(entries)),
        stream.settle(entries[0], task_id="t0"),  # a second settle of one entry: no effect
    )  # fmt: skip
    # Redis reads once per round trip (a pipeline this small arrives in one read).
    reads = (await redis.info("stats"))["total_reads_processed"] - before
    assert [r.took_effect for r in results] == [True] * 20 + [False]
    assert sorted(r.dead_letters for r in results if r.dead_letters) == list(range(1, 11))
    # One pipeline (all NOSCRIPT), SCRIPT LOAD, the pipeline again, this INFO: not one per settle.
    assert reads <= 5
    assert await redis.xlen(KEYS.stream) == 0
    assert await redis.xlen(KEYS.dead) == 10


async def test_settles_fail_together_while_redis_is_down_and_succeed_when_retried(
    redis: Redis,
) -> None:
    stream = await _stream(redis)
    for _ in range(3):
        await redis.xadd(KEYS.stream, {"v": "1"})
    entries = await stream.read_new(3, block_ms=10)
    # Nothing listens on port 1; no retries inside redis-py: the outage reaches the settles.
    broken = Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    down = Consumer(broken, "me")
    try:
        results = await asyncio.gather(
            *(down.settle(e, task_id="t") for e in entries), return_exceptions=True
        )
    finally:
        await broken.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results)
    settled = await asyncio.gather(*(stream.settle(e, task_id="t") for e in entries))
    assert all(s.took_effect for s in settled)
    assert await redis.xlen(KEYS.stream) == 0


async def test_an_entry_settled_between_claim_and_count_is_not_handed_out(redis: Redis) -> None:
    # Seen in a chaos run: a worker's settle waited out a Redis stall past the reclaim idle
    # time; its own reclaimer's XAUTOCLAIM ran first, the settle landed next, and the claimed
    # entry (with a delivery count read as missing) was sent a second time.
    holder, reclaimer = await _stream(redis, "holder"), await _stream(redis, "reclaimer")
    await redis.xadd(KEYS.stream, {"v": "1", "n": "settled"})
    await redis.xadd(KEYS.stream, {"v": "1", "n": "still pending"})
    first, second = await holder.read_new(2, block_ms=10)
    reply: Any = await redis.xautoclaim(KEYS.stream, CONSUMER_GROUP, "reclaimer", 0, "0-0")
    await holder.settle(first, task_id="t")  # lands between the claim and the count

    ids = [first.entry_id, second.entry_id]
    entries = await reclaimer.store._with_deliveries(ids, claimed_entries(reply[1]))

    assert [(e.entry_id, e.fields[b"n"], e.deliveries) for e in entries] == [
        (second.entry_id, b"still pending", 2)
    ]


# --- hostile entries: a script that fails must leave the entry where it was -----------------


# Packs its arguments after the first as the worker stores a delayed entry.
_PACK = "local t = {} for i = 2, #ARGV do t[#t + 1] = ARGV[i] end return cmsgpack.pack(t)"


def _fields(count: int) -> dict[bytes, bytes]:
    return {f"f{n}".encode(): b"x" for n in range(count)}


async def _where(redis: Redis, entry_id: str, task_id: str) -> list[str]:
    """The places that hold the entry (or its copy): exactly one, unless it was lost."""
    places = []
    if as_entries(await redis.xrange(KEYS.stream, entry_id, entry_id)):
        places.append("stream")
    if await redis.xpending_range(KEYS.stream, CONSUMER_GROUP, entry_id, entry_id, 1):
        places.append("pending")
    if await redis.zscore(KEYS.delayed, task_id) is not None:
        places.append("delayed")
    for _, fields in as_entries(await redis.xrange(KEYS.dead)):
        if fields.get(b"dead_entry_id") == entry_id.encode():
            places.append("dead")
    return places


async def test_a_settle_too_large_for_a_script_is_refused_before_it_writes(redis: Redis) -> None:
    # Lua's unpack() stops at about 8,000 values: a retry copy or dead letter of an entry with
    # thousands of fields used to fail after XACK + XDEL, and the entry was in no place at all.
    stream = await _stream(redis)
    await redis.xadd(KEYS.stream, cast_fields(_fields(5000)))
    (entry,) = await stream.read_new(1, block_ms=10)
    for write in (
        SettleWrite(entry.entry_id, "t", retry=RetryCopy(1, entry.fields)),
        SettleWrite(entry.entry_id, "t", dead={**entry.fields, b"dead_entry_id": b"x"}),
    ):
        with pytest.raises(ValueError, match=r"500[01] fields"):
            await stream.store.settle(write)
        assert await _where(redis, entry.entry_id, "t") == ["stream", "pending"]


async def test_promote_dead_letters_a_delayed_entry_it_cannot_put_back(redis: Redis) -> None:
    stream = await _stream(redis)
    pack = _PACK
    huge = await redis.eval(pack, 0, "x", *[b for pair in _fields(5000).items() for b in pair])
    for task_id, packed in (("huge", huge), ("garbage", b"\xc1not msgpack"), ("odd", b"\x91\xa1v")):
        await redis.zadd(KEYS.delayed, {task_id: 1})
        await redis.hset(KEYS.delayed_entries, task_id, packed)
    await redis.zadd(KEYS.delayed, {"good": 2})
    await redis.hset(
        KEYS.delayed_entries, "good", await redis.eval(pack, 0, "x", "v", "1", "id", "good")
    )

    assert await stream.promote_due(10, 100) == (4, None)

    ((_, promoted),) = as_entries(await redis.xrange(KEYS.stream))
    assert promoted == {b"v": b"1", b"id": b"good"}
    dead = {f[b"dead_task_id"]: f for _, f in as_entries(await redis.xrange(KEYS.dead))}
    assert sorted(dead) == [b"garbage", b"huge", b"odd"]
    assert dead[b"huge"][b"dead_packed"] == huge  # kept whole, for an operator to look at
    assert b"cannot be put back" in dead[b"huge"][b"dead_reason"]
    assert await redis.zcard(KEYS.delayed) == 0
    assert await redis.hlen(KEYS.delayed_entries) == 0


async def test_requeue_refuses_a_dead_letter_too_large_to_copy_and_keeps_it(
    redis: Redis,
) -> None:
    store = QueueStore(redis, KEYS)
    dead_id = await redis.xadd(KEYS.dead, cast_fields(_fields(5000)))
    with pytest.raises(ResponseError, match="5000 fields"):
        await store.requeue_dead(as_str(dead_id), "t")
    assert await redis.xlen(KEYS.dead) == 1
    assert await redis.xlen(KEYS.stream) == 0


def cast_fields(fields: Mapping[bytes, bytes]) -> Any:
    """xadd's parameter type is invariant in its key type; these bytes keys are fine."""
    return dict(fields)


# --- Redis at maxmemory (noeviction) --------------------------------------------------------


async def test_at_maxmemory_a_plain_ack_goes_through_and_a_retry_is_refused_untouched(
    redis: Redis,
) -> None:
    stream = await _stream(redis)
    for n in range(3):
        await redis.xadd(KEYS.stream, {"n": str(n)})
    sent, retried, dead = await stream.read_new(3, block_ms=10)
    await redis.zadd(KEYS.delayed, {"due": 1})
    await redis.hset(KEYS.delayed_entries, "due", await redis.eval(_PACK, 0, "x", "v", "1"))
    await redis.config_set("maxmemory", 1)
    try:
        assert (await stream.settle(sent, task_id="a")).took_effect  # acks free memory
        with pytest.raises(RedisFull) as refused:
            await stream.settle(retried, task_id="b", retry=(1, {b"n": b"1"}))
        with pytest.raises(RedisFull):
            await stream.settle(dead, task_id="c", dead={b"n": b"2"})
        with pytest.raises(RedisFull):
            await stream.promote_due(10, 100)
    finally:
        await redis.config_set("maxmemory", 0)
    assert refused.value.maxmemory == 1
    assert refused.value.policy == "noeviction"
    assert (refused.value.used_memory or 0) > 1
    assert await _where(redis, sent.entry_id, "a") == []
    assert await _where(redis, retried.entry_id, "b") == ["stream", "pending"]
    assert await _where(redis, dead.entry_id, "c") == ["stream", "pending"]
    assert await redis.zcard(KEYS.delayed) == 1  # the promotion waits too
    # Once memory is free the same writes go through.
    await stream.settle(retried, task_id="b", retry=(1, {b"n": b"1"}))
    await stream.settle(dead, task_id="c", dead={b"n": b"2", b"dead_entry_id": b"c"})
    assert await _where(redis, retried.entry_id, "b") == ["delayed"]


async def test_ensure_group_at_maxmemory_when_the_group_exists(redis: Redis) -> None:
    # XGROUP CREATE (with or without MKSTREAM) is refused at maxmemory before BUSYGROUP.
    store = QueueStore(redis, KEYS)
    assert await store.ensure_group()  # created
    await redis.config_set("maxmemory", 1)
    try:
        assert not await store.ensure_group()  # there already: nothing to write
        await redis.delete(KEYS.stream)
        with pytest.raises(RedisFull):
            await store.ensure_group()
    finally:
        await redis.config_set("maxmemory", 0)
    assert await store.ensure_group()
