"""The shared limiter's Lua (store/limiter.py) on a real Redis, as tables: GCRA slots, bursts,
costs, the rolling quota, the adaptive rate. Each case passes its own clock (`now_us`)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from service.keys import QueueKeys
from service.store import QueueStore
from service.store.limiter import (
    Acquired,
    LimiterConfig,
    acquire,
    acquire_reply,
    throttle,
    throttle_reply,
)
from service.store.scripts import ScriptCall

KEYS = QueueKeys("emails")
T0 = 1_800_000_000_000_000  # us
S = 1_000_000  # one second in us


async def _run(redis: Redis, call: ScriptCall) -> Any:
    return await redis.eval(call.source, len(call.keys), *call.keys, *call.args)


async def _acquire(
    redis: Redis, config: LimiterConfig, costs: list[int], at_us: int, horizon_s: float = 0.1
) -> Acquired:
    call = acquire(KEYS, config, costs, horizon_s=horizon_s, now_us=at_us)
    return acquire_reply(await _run(redis, call), config)


@pytest.mark.parametrize(
    ("config", "batches", "delays_ms"),
    [
        # 50/s, burst 5: five at once, then one every 20 ms.
        (LimiterConfig(50.0, burst=5), [(0, [1] * 7)], [[0, 0, 0, 0, 0, 20, 40]]),
        # Burst 1: evenly spaced from the first.
        (LimiterConfig(10.0, burst=1), [(0, [1, 1, 1])], [[0, 100, 200]]),
        # A second batch 50 ms later continues the schedule, in order.
        (LimiterConfig(10.0), [(0, [1, 1]), (50, [1])], [[0, 100], [150]]),
        # After a quiet second the bucket is full again (not fuller).
        (LimiterConfig(10.0, burst=2), [(0, [1, 1, 1]), (2000, [1, 1, 1])], [[0, 0, 100]] * 2),
        # Costs in recipients: 3 + 3 at 10/s with burst 5: the second waits for 1 unit.
        (LimiterConfig(10.0, burst=5), [(0, [3, 3])], [[0, 100]]),
        # A cost above the burst waits for what exceeds it.
        (LimiterConfig(10.0, burst=2), [(0, [5])], [[300]]),
        # Cost 0 (an entry that is never sent) takes no slot.
        (LimiterConfig(10.0), [(0, [0, 1, 0, 1])], [[0, 0, 0, 100]]),
        # Quota only: no waiting until it is used up; then the rest of the batch is refused.
        (LimiterConfig(None, quota=3), [(0, [1, 1, 1, 1, 1])], [[0, 0, 0, None, None]]),
        # A refused entry refuses the ones after it, even one that would fit (order kept).
        (LimiterConfig(None, quota=3), [(0, [2, 2, 1])], [[0, None, None]]),
    ],
)
async def test_slots(
    redis: Redis,
    config: LimiterConfig,
    batches: list[tuple[int, list[int]]],
    delays_ms: list[list[int | None]],
) -> None:
    got = []
    for at_ms, costs in batches:
        acquired = await _acquire(redis, config, costs, T0 + at_ms * 1000)
        got.append([None if d is None else round(d * 1000, 3) for d in acquired.delays_s])
    assert got == delays_ms


async def test_over_a_long_run_every_second_holds_at_most_the_rate_plus_the_burst(
    redis: Redis,
) -> None:
    config = LimiterConfig(50.0, burst=5)
    slots: list[float] = []
    now = T0
    for _ in range(200):  # batches of 3 read every 50 ms: faster than the limit allows
        acquired = await _acquire(redis, config, [1, 1, 1], now)
        slots += [now / S + d for d in acquired.delays_s if d is not None]
        now += 50_000
    slots.sort()
    worst = max(sum(1 for s in slots if a <= s < a + 1) for a in slots)
    assert worst <= 55
    rate = (len(slots) - 1) / (slots[-1] - slots[0])
    assert abs(rate - 50.0) / 50.0 < 0.02, rate


@pytest.mark.parametrize(
    ("config", "used_ms", "ask_ms", "ready", "wait_ms"),
    [
        # Idle: the whole burst, plus what the 100 ms horizon adds.
        (LimiterConfig(50.0, burst=5), [], 0, 10, 0),
        # 20 slots taken at once: the next starts in 300 ms, 200 ms past the horizon.
        (LimiterConfig(50.0, burst=5), [0] * 20, 0, 0, 220),
        # No rate limit, a quota of 2 of which 1 is used: 1 more.
        (LimiterConfig(None, quota=2), [0], 0, 1, 0),
    ],
)
async def test_what_the_next_read_may_take(
    redis: Redis,
    *,
    config: LimiterConfig,
    used_ms: list[int],
    ask_ms: int,
    ready: int,
    wait_ms: int,
) -> None:
    for at_ms in used_ms:
        await _acquire(redis, config, [1], T0 + at_ms * 1000)
    acquired = await _acquire(redis, config, [], T0 + ask_ms * 1000)
    assert (acquired.ready, round(acquired.wait_s * 1000)) == (ready, wait_ms)


async def test_the_quota_rolls_with_its_window(redis: Redis) -> None:
    config = LimiterConfig(None, quota=3, quota_window_s=10.0)
    first = await _acquire(redis, config, [1, 1], T0)
    second = await _acquire(redis, config, [1, 1], T0 + 5 * S)
    assert [first.delays_s, second.delays_s] == [(0.0, 0.0), (0.0, None)]
    # The refused entry has room once the first two sends left the window (a bucket is
    # 10 s / 1440 wide: they count until their whole bucket is older than 10 s).
    assert 5.0 <= second.reopen_s <= 5.01
    assert (second.ready, second.quota_used) == (0, 3)
    assert 5.0 <= second.wait_s <= 5.01
    still_full = await _acquire(redis, config, [1], T0 + 9 * S)
    assert still_full.delays_s == (None,)
    reopened = await _acquire(redis, config, [1, 1, 1], T0 + 10_010_000)
    assert reopened.delays_s == (0.0, 0.0, None)
    assert reopened.quota_used == 3


async def test_a_slow_down_lowers_the_rate_once_per_calm_period_and_it_climbs_back(
    redis: Redis,
) -> None:
    config = LimiterConfig(50.0)

    async def lower(at_us: int) -> tuple[bool, float]:
        reply = throttle_reply(await _run(redis, throttle(KEYS, 50.0, now_us=at_us)))
        return reply.lowered, reply.per_second

    assert (await _acquire(redis, config, [1], T0)).per_second == 50.0
    assert await lower(T0) == (True, 35.0)
    assert await lower(T0 + S) == (False, 35.0)  # within the calm period (2 s)
    assert (await _acquire(redis, config, [1], T0 + S)).per_second == 35.0
    assert await lower(T0 + 2 * S) == (True, 24.5)
    # Calm until T0 + 4 s, then +1/s (2% of 50) per second without a slow-down.
    climbing = [(await _acquire(redis, config, [], T0 + s * S)).per_second for s in (4, 5, 7)]
    assert climbing == [24.5, 25.5, 27.5]
    assert (await _acquire(redis, config, [], T0 + 60 * S)).per_second == 50.0  # the limit caps it
    # The floor: 1% of the limit.
    for k in range(30):
        await lower(T0 + (100 + 3 * k) * S)
    assert await lower(T0 + 200 * S) == (False, 0.5)


async def test_the_store_uses_redis_time_and_admin_reads_the_state(redis: Redis) -> None:
    store = QueueStore(redis, KEYS)
    config = LimiterConfig(14.0, burst=2, quota=100, quota_window_s=60.0)
    acquired = await store.acquire_slots(config, [1, 1, 1], horizon_s=0.1)
    assert acquired.delays_s[:2] == (0.0, 0.0)
    assert acquired.delays_s[2] is not None
    assert 0.06 < acquired.delays_s[2] <= 1 / 14
    await store.throttle(14.0)
    state = await store.limiter_state()
    assert (state.per_second, state.burst, state.quota, state.quota_used) == (14.0, 2, 100, 3)
    assert state.effective_per_second == pytest.approx(9.8)
    assert state.quota_window_s == 60.0


async def test_the_limiter_works_at_maxmemory(redis: Redis) -> None:
    """A worker at maxmemory goes on sending (and settling, which frees memory): the limiter's
    writes must not be refused then, whether its keys exist yet or not."""
    store = QueueStore(redis, KEYS)
    config = LimiterConfig(1000.0, burst=3, quota=100)
    await redis.config_set("maxmemory", 1)
    try:
        first = await store.acquire_slots(config, [1, 1], horizon_s=0.1)
        again = await store.acquire_slots(config, [1], horizon_s=0.1)
        lowered = await store.throttle(1000.0)
    finally:
        await redis.config_set("maxmemory", 0)
    assert (first.delays_s, again.delays_s, again.quota_used) == ((0.0, 0.0), (0.0,), 3)
    assert lowered.lowered


@pytest.mark.parametrize(
    ("config", "longest_ms", "batches", "delays_ms", "reopen_ms"),
    [
        # 10/s, burst 1, wait at most 150 ms: the third slot (200 ms) is refused, untaken...
        (LimiterConfig(10.0), 150, [(0, [1, 1, 1, 1])], [[0, 100, None, None]], [50]),
        # ...so a later call gets it, as soon as it is within 150 ms (at 60 ms: 140 ms away).
        (LimiterConfig(10.0), 150, [(0, [1, 1, 1]), (60, [1])], [[0, 100, None], [140]], [50, 0]),
        # Bursts are not waits: five at once, the sixth 20 ms later is within 30 ms.
        (LimiterConfig(50.0, burst=5), 30, [(0, [1] * 7)], [[0, 0, 0, 0, 0, 20, None]], [10]),
        # The quota still refuses first (and says when it has room).
        (
            LimiterConfig(10.0, quota=1, quota_window_s=10),
            500,
            [(0, [1, 1])],
            [[0, None]],
            [10_002],
        ),
    ],
)
async def test_a_slot_further_than_the_longest_wait_is_refused_and_left_free(  # noqa: PLR0917 - a table's columns
    redis: Redis,
    config: LimiterConfig,
    longest_ms: int,
    batches: list[tuple[int, list[int]]],
    delays_ms: list[list[float | None]],
    reopen_ms: list[int],
) -> None:
    got, reopens = [], []
    for at_ms, costs in batches:
        call = acquire(
            KEYS,
            config,
            costs,
            horizon_s=0.1,
            longest_wait_s=longest_ms / 1000,
            relay="ses",
            now_us=T0 + at_ms * 1000,
        )
        acquired = acquire_reply(await _run(redis, call), config)
        got.append([None if d is None else round(d * 1000, 3) for d in acquired.delays_s])
        reopens.append(round(acquired.reopen_s * 1000))
    assert (got, reopens) == (delays_ms, reopen_ms)
    # The relay's limiter is its own: the queue's was not touched.
    assert not await redis.exists(KEYS.limiter)
    assert await redis.exists(KEYS.relay_limiter("ses"))


async def test_relays_announced_are_read_back_by_admin(redis: Redis) -> None:
    store = QueueStore(redis, KEYS)
    await store.announce_relay_limits(["ses", "postmark"])
    config = LimiterConfig(14.0, burst=2, quota=100)
    await store.acquire_slots(config, [1, 1, 1], horizon_s=0.1, relay="ses", longest_wait_s=1)
    states = await store.relay_limiter_states()
    assert list(states) == ["postmark", "ses"]
    assert (states["ses"].per_second, states["ses"].burst, states["ses"].quota) == (14.0, 2, 100)
    assert states["ses"].quota_used == 3
    assert (states["postmark"].per_second, states["postmark"].quota_used) == (None, 0)
