"""What each page shows, read through the queue's store and admin (no Redis command here).

Every read is bounded whatever the queue holds: sizes and heads are O(1) commands, lists are
pages by stream id or due time, the charts read 60 small hashes in one round trip, and a
filtered list of dead letters looks at no more than `SCAN_LIMIT` letters per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from ..admin.queue import DeadLetter, QueueAdmin, QueueStats, WorkerBeat
from ..status import TaskStatus, is_task_id
from ..store import ConsumerInfo, QueueStore
from ..store.history import MinuteCounts
from ..store.reads import Scheduled
from .charts import Chart, chart
from .filters import DeadFilter

__all__ = [
    "PAGE_SIZE",
    "SCAN_LIMIT",
    "DeadPage",
    "Found",
    "Overview",
    "ScheduledPage",
    "dead_page",
    "find",
    "overview",
    "scheduled_page",
    "workers",
]

PAGE_SIZE: Final = 50
# The most dead letters one filtered list request reads (then it offers "older" from there).
SCAN_LIMIT: Final = 2_000
_SCAN_BATCH: Final = 200
_HISTORY_MINUTES: Final = 60


@dataclass(frozen=True, slots=True)
class Overview:
    """The Overview page."""

    stats: QueueStats
    live_workers: int
    workers: int
    minutes: list[MinuteCounts]  # oldest first, the current minute last
    throughput: Chart  # sent, failed per minute
    latency: Chart  # mean enqueue-to-accept seconds per minute
    sent_last_hour: int
    failed_last_hour: int


async def overview(admin: QueueAdmin, store: QueueStore) -> Overview:
    """Sizes, workers, the last hour and the send limits."""
    stats = await admin.stats()
    beats = await admin.workers()
    now_minute = int(time.time() // 60)
    minutes = await store.minutes(now_minute - _HISTORY_MINUTES + 1, _HISTORY_MINUTES)
    latency = [(m.latency_ms_mean or 0) / 1000 if m.sent else None for m in minutes]
    return Overview(
        stats=stats,
        live_workers=sum(beat.live for beat in beats),
        workers=len(beats),
        minutes=minutes,
        throughput=chart([[m.sent for m in minutes], [m.failed for m in minutes]]),
        latency=chart([latency]),
        sent_last_hour=sum(m.sent for m in minutes),
        failed_last_hour=sum(m.failed for m in minutes),
    )


async def workers(
    admin: QueueAdmin, store: QueueStore
) -> tuple[list[WorkerBeat], dict[str, ConsumerInfo]]:
    """Heartbeats, and the consumer group's view of each consumer (pending, idle)."""
    beats = await admin.workers()
    consumers = {consumer.name: consumer for consumer in await store.consumers()}
    return beats, consumers


@dataclass(frozen=True, slots=True)
class DeadPage:
    """One page of dead letters, newest first."""

    letters: list[DeadLetter]
    older: str | None  # the `before` of the next page; None: no more
    scanned: int  # letters read to fill it (a filter may skip many)
    total: int


async def dead_page(
    admin: QueueAdmin, store: QueueStore, *, before: str, wanted: DeadFilter
) -> DeadPage:
    """Up to `PAGE_SIZE` letters passing `wanted`, from id `before` back, reading at most
    `SCAN_LIMIT` letters."""
    letters: list[DeadLetter] = []
    scanned = 0
    cursor = before
    exhausted = False
    size = PAGE_SIZE if wanted.empty else _SCAN_BATCH
    while len(letters) < PAGE_SIZE and scanned < SCAN_LIMIT:
        batch = await admin.dead_letters_before(limit=size, before=cursor)
        for letter in batch:
            scanned += 1
            cursor = "(" + letter.dead_id
            if wanted(letter):
                letters.append(letter)
                if len(letters) == PAGE_SIZE:
                    break
        if len(batch) < size and (not batch or cursor == "(" + batch[-1].dead_id):
            exhausted = True
            break
    sizes = await store.sizes()
    return DeadPage(letters, None if exhausted else cursor, scanned, sizes.dead)


@dataclass(frozen=True, slots=True)
class ScheduledPage:
    """One page of delayed tasks in due order."""

    tasks: list[Scheduled]
    next_from_ms: int | None
    next_skip: int
    total: int


async def scheduled_page(store: QueueStore, *, from_ms: int, skip: int) -> ScheduledPage:
    """Up to `PAGE_SIZE` delayed tasks, due from `from_ms` on (the first `skip` of that
    due time left out)."""
    tasks = await store.scheduled(from_ms=from_ms, skip=skip, count=PAGE_SIZE + 1)
    sizes = await store.sizes()
    more = len(tasks) > PAGE_SIZE
    tasks = tasks[:PAGE_SIZE]
    if not more or not tasks:
        return ScheduledPage(tasks, None, 0, sizes.delayed)
    last_due = tasks[-1].due_ms
    same = sum(1 for task in tasks if task.due_ms == last_due)
    next_skip = same + (skip if last_due == from_ms else 0)
    return ScheduledPage(tasks, last_due, next_skip, sizes.delayed)


@dataclass(frozen=True, slots=True)
class Found:
    """What "Find a task" found for a task id or a tag."""

    query: str
    status: TaskStatus | None  # for a task id: where the task is now (the status ledger)
    scheduled: Scheduled | None
    dead: list[DeadLetter]
    dead_scanned: int


async def find(admin: QueueAdmin, store: QueueStore, query: str) -> Found:
    """For a task id, its status and delayed copy; for a task id or a tag, the newest dead
    letters (up to `SCAN_LIMIT` read) of that task or carrying that tag."""
    query = query.strip()[:200]
    is_id = is_task_id(query)
    status = await store.status(query) if is_id else None
    scheduled = await store.scheduled_one(query) if is_id else None
    tag = DeadFilter(tag=query)
    found: list[DeadLetter] = []
    scanned = 0
    cursor = "+"
    while scanned < SCAN_LIMIT and len(found) < PAGE_SIZE:
        batch = await admin.dead_letters_before(limit=_SCAN_BATCH, before=cursor)
        for letter in batch:
            if letter.task_id == query if is_id else tag(letter):
                found.append(letter)
        scanned += len(batch)
        if len(batch) < _SCAN_BATCH:
            break
        cursor = "(" + batch[-1].dead_id
    return Found(query, status, scheduled, found[:PAGE_SIZE], scanned)
