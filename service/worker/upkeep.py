"""Background upkeep of a queue that every worker runs: promoting due tasks, reporting sizes.

Any number of workers may run these at once: promotion is one atomic script per batch, so a
due task is moved exactly once whoever gets to it first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import structlog

from ..store import QueueStore
from .backoff import retry_while_unavailable

__all__ = ["promote_forever", "promotion_wait", "report_forever"]

log = structlog.get_logger("service.worker")

# Tasks moved per script call: long enough to drain quickly, short enough not to stall Redis.
_PROMOTE_BATCH: Final = 500
# A due task waits at most this long before it is back in the stream.
_MAX_PROMOTION_WAIT_SECONDS: Final = 1.0
_MIN_PROMOTION_WAIT_SECONDS: Final = 0.01
_REPORT_EVERY_SECONDS: Final = 60.0


def promotion_wait(next_due_ms: int | None, now_ms: int) -> float:
    """Seconds to sleep before the next promotion, given the earliest due time left."""
    if next_due_ms is None:
        return _MAX_PROMOTION_WAIT_SECONDS
    wait = (next_due_ms - now_ms) / 1000
    return min(max(wait, _MIN_PROMOTION_WAIT_SECONDS), _MAX_PROMOTION_WAIT_SECONDS)


async def promote_forever(store: QueueStore) -> None:
    """Move retries and scheduled sends into the stream when due (until cancelled)."""
    while True:
        moved, next_due = await retry_while_unavailable(
            "promote", lambda: store.promote_due(time.time_ns() // 1_000_000, _PROMOTE_BATCH)
        )
        if moved:
            log.debug("tasks_promoted", tasks=moved)
        if moved < _PROMOTE_BATCH:
            await asyncio.sleep(promotion_wait(next_due, time.time_ns() // 1_000_000))


async def report_forever(store: QueueStore) -> None:
    """Log the queue's sizes every minute; louder while dead letters are waiting for someone."""
    while True:
        sizes = await retry_while_unavailable("report", store.sizes)
        level = log.warning if sizes.dead else log.info
        lanes = dict(sizes.lanes or {})
        level(
            "queue_sizes",
            stream=sizes.stream,
            lanes=lanes,
            delayed=sizes.delayed,
            dead_letters=sizes.dead,
        )
        await asyncio.sleep(_REPORT_EVERY_SECONDS)
