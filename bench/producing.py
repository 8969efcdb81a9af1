"""The producer's rates, and the producer against its redis-py floors, each call paired with
the floor's.

Each measured call (`Producer.enqueue`, `Producer.enqueue_many`, the ADD_NOW script alone) is
followed by the floor's call for as many tasks (a bare XADD; a pipeline of XADDs), and each call
is timed on its own. Both then run in the same state of the machine (its caches, its clock, the
other processes' load), so their ratio holds far steadier than that of two loops run one after
the other on a shared machine (see docs/performance.md). Tasks are validated before timing.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service import EmailTask, Producer
from service.keys import QueueKeys
from service.status import DEFAULT_STATUS_TTL
from service.store import scripts
from service.store.scripts import NewTask

from .workload import xadd_fields

__all__ = [
    "BATCH_SIZE",
    "Paired",
    "add_now_paired",
    "enqueue_many_paired",
    "enqueue_many_rate",
    "enqueue_paired",
    "enqueue_rate",
    "median_paired",
]

BATCH_SIZE = 1_000
_FLOOR_STREAM = "f:paired"

Call = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Paired:
    """Tasks a second of the measured calls and of the floor's calls between them."""

    rate: float
    floor: float

    @property
    def ratio(self) -> float:
        return self.rate / self.floor


async def paired(measured: Call, floor: Call, sizes: Sequence[int]) -> Paired:
    """`measured(i)`, then `floor(i)`, for each call i of `sizes[i]` tasks; each call timed."""
    spent = [0.0, 0.0]
    for index in range(len(sizes)):
        for slot, call in enumerate((measured, floor)):
            started = time.perf_counter()
            await call(index)
            spent[slot] += time.perf_counter() - started
    tasks = sum(sizes)
    return Paired(tasks / spent[0], tasks / spent[1])


async def median_paired(runs: int, measure: Callable[[], Awaitable[Paired]]) -> list[Paired]:
    """`measure` run `runs` times: every run, the one with the median ratio first."""
    samples = [await measure() for _ in range(runs)]
    middle = statistics.median_low([sample.ratio for sample in samples])
    return sorted(samples, key=lambda sample: sample.ratio != middle)


async def enqueue_paired(producer: Producer, redis: Redis, tasks: list[EmailTask]) -> Paired:
    """One `enqueue` a task, each followed by one bare XADD of an entry of the same size."""

    async def enqueue(index: int) -> None:
        await producer.enqueue(tasks[index])

    return await paired(enqueue, _bare_xadd(redis), [1] * len(tasks))


async def enqueue_many_paired(producer: Producer, redis: Redis, tasks: list[EmailTask]) -> Paired:
    """`enqueue_many` with `BATCH_SIZE` tasks a call, each followed by a pipeline of as many
    XADDs (no transaction: the floor of one round trip)."""
    batches = [tasks[start : start + BATCH_SIZE] for start in range(0, len(tasks), BATCH_SIZE)]
    fields: Any = xadd_fields()

    async def enqueue_many(index: int) -> None:
        await producer.enqueue_many(batches[index])

    async def xadds(index: int) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in batches[index]:
                pipe.xadd(_FLOOR_STREAM, fields)
            await pipe.execute()

    return await paired(enqueue_many, xadds, [len(batch) for batch in batches])


async def enqueue_rate(producer: Producer, tasks: list[EmailTask]) -> float:
    """One `enqueue` (one round trip) per task, alone: tasks a second."""
    started = time.perf_counter()
    for task in tasks:
        await producer.enqueue(task)
    return len(tasks) / (time.perf_counter() - started)


async def enqueue_many_rate(producer: Producer, tasks: list[EmailTask]) -> float:
    """`enqueue_many` with `BATCH_SIZE` tasks per call, alone: tasks a second."""
    started = time.perf_counter()
    for start in range(0, len(tasks), BATCH_SIZE):
        await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
    return len(tasks) / (time.perf_counter() - started)


async def add_now_paired(redis: Redis, queue: str, count: int) -> Paired:
    """The ADD_NOW script alone (an XADD and the task's status record, what a plain enqueue
    with records sends), its calls built before timing, each followed by one bare XADD: the
    floor of an enqueue that keeps status records."""
    fields = xadd_fields()
    now_ms = time.time_ns() // 1_000_000
    ttl_ms = scripts.status_ttl_ms(DEFAULT_STATUS_TTL)
    calls = [
        scripts.add_now(
            QueueKeys(queue),
            [NewTask(uuid.uuid4().hex, fields)],
            status_ttl_ms=ttl_ms,
            now_ms=now_ms,
        )
        for _ in range(count)
    ]
    script = redis.register_script(scripts.ADD_NOW)
    await redis.script_load(scripts.ADD_NOW)

    async def add_now(index: int) -> None:
        await script(keys=calls[index].keys, args=calls[index].args)

    return await paired(add_now, _bare_xadd(redis), [1] * count)


def _bare_xadd(redis: Redis) -> Call:
    """The floor of one task: one XADD of an entry of the size a producer writes."""
    fields: Any = xadd_fields()

    async def xadd(_: int) -> None:
        await redis.xadd(_FLOOR_STREAM, fields)

    return xadd
