"""Stopping the worker: one deadline for the whole shutdown, and tasks stopped for sure.

The first stop request fixes a deadline `WORKER_SHUTDOWN_SECONDS` away; every later step (the
drain of in-flight sends, their fate writes, leaving the consumer group, removing the
heartbeat, SMTP QUIT) runs within it, so a supervisor's kill timeout only needs a small margin
above the setting. A second request forces the stop at once.

On Python 3.11, `asyncio.wait_for` returns the awaited result instead of raising CancelledError
when that call finished in the same turn of the loop as the cancellation (CPython gh-86296,
fixed in 3.12). redis-py's writes and aiosmtplib's reads go through `wait_for`, so one
`task.cancel()` can be lost, and a loop told to stop would run on until systemd's SIGKILL.
`cancel_and_wait` cancels again until the task has ended; a TaskGroup cancels its tasks only
once, which is why the worker keeps its loops as plain tasks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any, Final

import structlog

__all__ = ["Shutdown", "cancel_and_wait"]

log = structlog.get_logger("service.worker")

# A cancellation not obeyed within this long is repeated.
_RECANCEL_AFTER_SECONDS: Final = 0.5
# What the steps after the drain (last fate writes, leaving the group, removing the heartbeat,
# QUIT: a round trip each, most at once) keep of the deadline: this much, or a fifth of it.
_CLOSING_SECONDS: Final = 2.0


class Shutdown:
    """Whether the worker was asked to stop, by when it must be done, and whether it is forced.

    `request` is what the signal handlers call: it only sets state.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline = math.inf  # monotonic clock
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()

    def request(self, reason: str) -> None:
        """First call: stop within the deadline. Second call: stop at once."""
        if self.requested.is_set():
            self.forced.set()
        else:
            self.begin()
        log.info("stop_requested", signal=reason, forced=self.forced.is_set())

    def begin(self) -> None:
        """Fix the deadline now, unless it is already fixed (a request, or the worker failing)."""
        if not self.requested.is_set():
            self._deadline = time.monotonic() + self._seconds
            self.requested.set()

    def remaining(self) -> float:
        """Seconds left before the deadline: infinite until a stop is requested, zero once it
        is forced."""
        if self.forced.is_set():
            return 0.0
        return max(self._deadline - time.monotonic(), 0.0)

    def drain_remaining(self) -> float:
        """Seconds left for in-flight sends: the deadline less what the closing steps keep."""
        return max(self.remaining() - min(_CLOSING_SECONDS, self._seconds / 5), 0.0)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], message: str) -> None:
    """Cancel `tasks` until every one has ended; their errors are left on them, unraised."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel(message)
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_AFTER_SECONDS)
    # Every task is done: this only marks their exceptions as retrieved.
    await asyncio.gather(*tasks, return_exceptions=True)
