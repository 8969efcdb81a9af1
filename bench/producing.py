"""`Producer.enqueue` and `Producer.enqueue_many` rates (tasks are validated before timing)."""

from __future__ import annotations

import time

from service import EmailTask, Producer

__all__ = ["BATCH_SIZE", "enqueue_many_rate", "enqueue_rate"]

BATCH_SIZE = 1_000


async def enqueue_rate(producer: Producer, tasks: list[EmailTask]) -> float:
    """One `enqueue` (one round trip) per task."""
    started = time.perf_counter()
    for task in tasks:
        await producer.enqueue(task)
    return len(tasks) / (time.perf_counter() - started)


async def enqueue_many_rate(producer: Producer, tasks: list[EmailTask]) -> float:
    """`enqueue_many` with `BATCH_SIZE` tasks per call."""
    started = time.perf_counter()
    for start in range(0, len(tasks), BATCH_SIZE):
        await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
    return len(tasks) / (time.perf_counter() - started)
