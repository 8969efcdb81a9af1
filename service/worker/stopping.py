"""Stopping tasks for sure: cancel them, and cancel again until they have ended.

On Python 3.11, `asyncio.wait_for` returns the awaited result instead of raising CancelledError
when that call finished in the same turn of the loop as the cancellation (CPython gh-86296,
fixed in 3.12). redis-py's writes and aiosmtplib's reads go through `wait_for`, so one
`task.cancel()` can be lost, and a loop told to stop would run on until systemd's SIGKILL.
Every task that must end is given here itself: a TaskGroup cancels its tasks only once, which
is why the worker keeps its loops as plain tasks (seen: a SIGTERM just after start left the
reader blocked in XREADGROUP, about 1 start in 10).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["cancel_and_wait"]

# A cancellation not obeyed within this long is repeated.
_RECANCEL_AFTER_SECONDS: Final = 0.5


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
