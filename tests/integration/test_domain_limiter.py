"""The per-domain limiter's Lua (store/domains.py) on a real Redis, as tables: each domain's
line, entries to several domains, set-aside entries keeping their slot, send slots after the
shared limiter's. Each case passes its own clock (`now_us`)."""

from __future__ import annotations

import itertools

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.keys import QueueKeys
from service.rates import parse_domain_limits
from service.store import QueueStore
from service.store.domains import commit_domains, domain_slots_reply, plan_domains
from service.store.scripts import ScriptCall

KEYS = QueueKeys("emails")
T0 = 1_800_000_000_000_000  # us
LIMITS = parse_domain_limits("g.com=2/s,y.com=10/s")

# A batch: (at ms, [(task id, its limited domains)]); what each entry gets: ms until its slot,
# negative when it is set aside (its slot is that far away).
Batch = tuple[int, list[tuple[str, list[str]]]]


async def _run(redis: Redis, call: ScriptCall) -> list[int]:
    reply = await redis.eval(call.source, len(call.keys), *call.keys, *call.args)
    slots = domain_slots_reply(reply)
    return [round(s.delay_s * 1000) * (-1 if s.set_aside else 1) for s in slots]


async def _batches(redis: Redis, batches: list[Batch], shared_ms: int = 0) -> list[list[int]]:
    """PLAN each batch, then COMMIT those that go as if the shared limiter gave each a slot
    `shared_ms` away, each no earlier than its planned place, as a worker does."""
    got = []
    for at_ms, entries in batches:
        now_us = T0 + at_ms * 1000
        plan = await _run(redis, plan_domains(KEYS, LIMITS, entries, horizon_s=0.1, now_us=now_us))
        going = [
            (t, max(shared_ms, ms) / 1000, d)
            for (t, d), ms in zip(entries, plan, strict=True)
            if ms >= 0
        ]
        commit = iter(
            await _run(redis, commit_domains(KEYS, LIMITS, going, horizon_s=0.1, now_us=now_us))
        )
        got.append([next(commit) if ms >= 0 else ms for ms in plan])
    return got


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        # 2/s: the first now, the next two set aside at 500 ms and 1 s (further than 100 ms).
        ([(0, [("a", ["g.com"]), ("b", ["g.com"]), ("c", ["g.com"])])], [[0, -500, -1000]]),
        # 10/s: the second's slot (100 ms) is within the horizon: it waits, it is not set aside.
        ([(0, [("a", ["y.com"]), ("b", ["y.com"]), ("c", ["y.com"])])], [[0, 100, -200]]),
        # Lines are independent: g.com's backlog does not delay y.com.
        (
            [(0, [("a", ["g.com"]), ("b", ["g.com"]), ("c", ["y.com"]), ("d", ["y.com"])])],
            [[0, -500, 0, 100]],
        ),
        # An email to both domains takes the later slot of the two, and both lines move past it.
        (
            [(0, [("a", ["g.com"]), ("b", ["y.com", "g.com"]), ("c", ["y.com"])])],
            [[0, -500, -600]],
        ),
        # An entry to no limited domain takes nothing (and moves no line).
        ([(0, [("a", []), ("b", ["g.com"]), ("c", [])])], [[0, 0, 0]]),
        # A later batch continues the line; an idle line is free again (not ahead of time).
        (
            [
                (0, [("a", ["g.com"])]),
                (200, [("b", ["g.com"])]),
                (460, [("b", ["g.com"])]),  # b's copy, due 50 ms before its slot
                (5000, [("c", ["g.com"])]),
            ],
            [[0], [-300], [40], [0]],
        ),
        # Behind a copy that does not come back (late, or cancelled), new entries wait their
        # turn after it: one interval per copy waiting ahead.
        (
            [(0, [("a", ["g.com"]), ("b", ["g.com"])]), (5000, [("c", ["g.com"])])],
            [[0, -500], [-500]],
        ),
        # A set-aside copy read again well before its slot (a stop put it back due at once)
        # keeps its place, set aside again; a new entry still queues behind it.
        (
            [
                (0, [("a", ["g.com"]), ("b", ["g.com"])]),
                (300, [("b", ["g.com"]), ("c", ["g.com"])]),
            ],
            [[0, -500], [-200, -700]],
        ),
        # Read again just before its slot (its copy is due 50 ms before): it waits for it.
        ([(0, [("a", ["g.com"]), ("b", ["g.com"])]), (450, [("b", ["g.com"])])], [[0, -500], [50]]),
        # Read again a little late (a slow promotion): at once, and the line moves on from it.
        (
            [
                (0, [("a", ["g.com"]), ("b", ["g.com"])]),
                (800, [("b", ["g.com"]), ("c", ["g.com"])]),
            ],
            [[0, -500], [0, -500]],
        ),
        # Copies back late together (behind a stream backlog): the first at once, the others
        # set aside again one interval apart, in their order: never faster than the rate.
        (
            [
                (0, [("a", ["g.com"])] + [(t, ["g.com"]) for t in "bcdef"]),
                (3000, [(t, ["g.com"]) for t in "bcdef"]),
            ],
            [[0, -500, -1000, -1500, -2000, -2500], [0, -500, -1000, -1500, -2000]],
        ),
        # Back far too late (more than 10 s: its copy was held up): it queues anew.
        (
            [(0, [("a", ["g.com"]), ("b", ["g.com"])]), (70_000, [("b", ["g.com"]), ("c", [])])],
            [[0, -500], [0, 0]],
        ),
    ],
)
async def test_slots(redis: Redis, batches: list[Batch], expected: list[list[int]]) -> None:
    assert await _batches(redis, batches) == expected


async def test_a_kept_slot_is_used_once(redis: Redis) -> None:
    """Once its copy goes out (its slot within the horizon) the slot is no longer kept: a
    later copy of the same task (a real retry) queues anew."""
    got = await _batches(
        redis,
        [
            (0, [("a", ["g.com"]), ("b", ["g.com"])]),
            (450, [("b", ["g.com"])]),  # 50 ms early: within the horizon, taken
            (460, [("b", ["g.com"])]),  # the same task again: a new slot after b's
        ],
    )
    assert got == [[0, -500], [50], [-540]]
    assert await redis.zcard(KEYS.domain_kept("g.com")) == 1  # the last one, kept


@pytest.mark.parametrize("shared_ms", [0, 30, 100])
async def test_over_a_long_run_a_domain_holds_its_rate(redis: Redis, shared_ms: int) -> None:
    """Entries read far faster than 2/s, set aside and read again at their copy's due time
    (50 ms before its slot), each sent at the later of its domain's and its shared slot
    (`shared_ms` away): sends are never closer than 500 ms, and the line keeps its pace."""
    due: list[tuple[int, str]] = []  # set-aside copies: (due us, task id)
    sent: list[int] = []
    for step in range(200):  # a new entry every 50 ms, for 10 s
        now_ms = step * 50
        entries = [(task, ["g.com"]) for at, task in sorted(due) if at <= now_ms * 1000]
        entries.append((f"t{step}", ["g.com"]))
        due = [(at, task) for at, task in due if at > now_ms * 1000]
        delays = (await _batches(redis, [(now_ms, entries)], shared_ms))[0]
        for (task, _), delay in zip(entries, delays, strict=True):
            if delay < 0:
                due.append((now_ms * 1000 - delay * 1000 - 50_000, task))
            else:
                sent.append(now_ms * 1000 + delay * 1000)
    sent.sort()
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 500_000
    assert len(sent) >= 18


async def test_a_send_waits_for_its_shared_slot_and_the_domain_moves_past_it(
    redis: Redis,
) -> None:
    got = await _batches(redis, [(0, [("a", ["y.com"]), ("b", ["y.com"])])], shared_ms=50)
    assert got == [[50, 150]]  # a at its shared slot; b 100 ms after a's send
    # COMMIT alone, as two workers whose PLANs ran first: the second finds the domain taken
    # further than the horizon past its shared slot, and is set aside (after the line's end).
    call = commit_domains(KEYS, LIMITS, [("x", 0.0, ["g.com"])] * 2, horizon_s=0.1, now_us=T0)
    assert await _run(redis, call) == [0, -500]


async def test_a_wrong_key_type_writes_nothing(redis: Redis) -> None:
    await redis.set(KEYS.domain_kept("y.com"), "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await _batches(redis, [(0, [("a", ["g.com"])])])
    assert await redis.exists(KEYS.domain_limiter) == 0


async def test_the_store_uses_redis_time_and_admin_reads_the_state(redis: Redis) -> None:
    store = QueueStore(redis, KEYS)
    assert await store.domain_state() == ()
    slots = await store.plan_domain_slots(
        LIMITS, [("a", ["g.com"]), ("b", ["g.com"])], horizon_s=0.1
    )
    assert [s.set_aside for s in slots] == [False, True]
    assert 0.49 < slots[1].delay_s <= 0.5
    sent = await store.commit_domain_slots(LIMITS, [("a", 0.0, ["g.com"])], horizon_s=0.1)
    assert sent[0].set_aside is False
    assert sent[0].delay_s < 0.01
    state = {s.domain: s for s in await store.domain_state()}
    assert [(s.domain, s.limit, s.set_aside) for s in state.values()] == [
        ("g.com", "2/s", 1),
        ("y.com", "10/s", 0),
    ]
    assert 0.9 < state["g.com"].next_free_s <= 1.0
    assert state["y.com"].next_free_s == 0


async def test_the_domain_limiter_works_at_maxmemory(redis: Redis) -> None:
    """As the shared limiter: a worker at maxmemory goes on sending and settling."""
    store = QueueStore(redis, KEYS)
    await redis.config_set("maxmemory", 1)
    try:
        first = await store.plan_domain_slots(LIMITS, [("a", ["g.com"])], horizon_s=0.1)
        sent = await store.commit_domain_slots(LIMITS, [("a", 0.0, ["g.com"])], horizon_s=0.1)
        again = await store.plan_domain_slots(LIMITS, [("b", ["g.com"])], horizon_s=0.1)
    finally:
        await redis.config_set("maxmemory", 0)
    assert [first[0].set_aside, sent[0].set_aside, again[0].set_aside] == [False, False, True]


async def test_a_copy_holds_its_place_against_other_workers_until_it_commits(
    redis: Redis,
) -> None:
    def plan(entries: list[tuple[str, list[str]]], at_ms: int) -> ScriptCall:
        return plan_domains(KEYS, LIMITS, entries, horizon_s=0.1, now_us=T0 + at_ms * 1000)

    def commit(entries: list[tuple[str, float, list[str]]], at_ms: int) -> ScriptCall:
        return commit_domains(KEYS, LIMITS, entries, horizon_s=0.1, now_us=T0 + at_ms * 1000)

    g = ["g.com"]
    assert await _batches(redis, [(0, [("a", g), ("b", g), ("c", g)])]) == [[0, -500, -1000]]
    # b and c come back late, read by two workers at once: b goes; c, planned before b's
    # COMMIT, still finds b ahead of it and waits its turn (one interval after b).
    assert await _run(redis, plan([("b", g)], 2000)) == [0]
    assert await _run(redis, plan([("c", g)], 2001)) == [-500]
    assert await _run(redis, commit([("b", 0.0, g)], 2002)) == [0]
    # COMMIT finds c's domain slot taken too far past its shared slot (a third worker sent
    # meanwhile): c is set aside again, keeping its place at the head of the line.
    assert await _run(redis, plan([("c", g)], 2490)) == [12]
    await redis.hset(KEYS.domain_limiter, "sent:g.com", str(T0 + 3_000_000))
    assert await _run(redis, commit([("c", 0.0, g)], 2491)) == [-509]
    assert await redis.zrange(KEYS.domain_kept("g.com"), 0, -1) == [b"c"]


async def test_copies_of_one_batch_go_one_after_the_other(redis: Redis) -> None:
    y = ["y.com"]  # 10/s: two sends fit within the 100 ms horizon
    got = await _batches(
        redis, [(0, [("a", y), ("b", y), ("c", y), ("d", y)]), (350, [("c", y), ("d", y)])]
    )
    assert got == [[0, 100, -200, -300], [0, 100]]
    assert await redis.zcard(KEYS.domain_kept("y.com")) == 0


async def test_a_finished_task_s_kept_slot_does_not_hold_the_line(redis: Redis) -> None:
    g = ["g.com"]
    assert await _batches(redis, [(0, [("a", g), ("b", g), ("c", g)])]) == [[0, -500, -1000]]
    await redis.hset(KEYS.status("b"), "s", "cancelled")  # b's copy was cancelled
    assert await _batches(redis, [(900, [("c", g)])]) == [[100]]
    assert await redis.zcard(KEYS.domain_kept("g.com")) == 0
