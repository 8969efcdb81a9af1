"""When a plain enqueue may skip the exact backlog check.

The exact check is part of the ENQUEUE script, and a Lua call costs about a third of a plain
XADD's throughput. Far below `max_backlog` the check cannot fail, so a plain enqueue (no
idempotency key, nothing scheduled) is a bare XADD, and a plain batch one MULTI/EXEC of XADDs
(still all or nothing), while the backlog this producer last read is fresh and the batch leaves
more than a margin below the limit; every script call reads it again.

What that gives up: the limit can be passed only if all producers together enqueue more than
the margin (a tenth of the limit, at least 1,000) within `FRESH_SECONDS`, that is above 50,000
tasks per second. Near the limit, and for limits of 1,000 or less, every enqueue is checked
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["FRESH_SECONDS", "BacklogEstimate", "margin"]

# How long a backlog read stays good for deciding.
FRESH_SECONDS: Final = 0.02


def margin(limit: int) -> int:
    """How far below `limit` the backlog must be for a plain enqueue to skip the check."""
    return max(limit // 10, 1_000)


@dataclass(slots=True)
class BacklogEstimate:
    """A producer's view of its queue's backlog (monotonic clock times)."""

    limit: int  # 0: no limit
    read: int = 0  # the backlog as last read from Redis
    read_at: float = -math.inf
    added_since: int = 0  # plain enqueues by this producer since that read

    def allows_plain_add(self, now: float, count: int = 1) -> bool:
        """Whether `count` tasks enqueued at `now` may be bare XADDs."""
        if not self.limit:
            return True
        if now - self.read_at > FRESH_SECONDS:
            return False
        return self.read + self.added_since + count - 1 + margin(self.limit) < self.limit

    def observe(self, backlog: int, now: float) -> None:
        """The backlog Redis reported at `now` (after the tasks of that call were added)."""
        self.read, self.read_at, self.added_since = backlog, now, 0

    def add(self, count: int = 1) -> None:
        """This producer enqueued `count` tasks without the check."""
        self.added_since += count
