"""Capped exponential backoff with jitter, and riding out Redis outages with it.

Two conditions are waited out: Redis unreachable (restarting, failing over), and Redis at
`maxmemory` refusing writes that add data (`RedisFull`). The second is one state of the server
that every loop of the process meets at once (settles, promotions, heartbeats), so it is logged
once when it begins and once when it ends, not once per loop or per retry.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import structlog
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import RedisFull

__all__ = [
    "MEMORY",
    "TRANSIENT_REDIS_ERRORS",
    "MemoryState",
    "backoff_delay",
    "is_transient",
    "redis_retry_delay",
    "retry_while_unavailable",
]

T = TypeVar("T")

log = structlog.get_logger("service.worker")

# Failures worth waiting out: Redis restarting, failing over (a replica answers READONLY until
# it is promoted; a cluster answers CLUSTERDOWN, TRYAGAIN or has no node for a slot until a
# replica took over) or briefly unreachable.
TRANSIENT_REDIS_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    OSError,
)
# A cluster client that reaches none of its nodes while rebuilding its slot map (a failover
# under way) raises RedisClusterException from the connection error: `is_transient` tells it
# from the same class's lasting failures (a node not in cluster mode).
_MAYBE_TRANSIENT: Final = (*TRANSIENT_REDIS_ERRORS, RedisClusterException)
_REDIS_FIRST_DELAY_SECONDS: Final = 0.5
_REDIS_MAX_DELAY_SECONDS: Final = 15.0
# A write refused at maxmemory is tried again soon: memory frees as soon as settles go through,
# and a held settle keeps its entry pending (and its delivery in memory) until it is written.
_FULL_FIRST_DELAY_SECONDS: Final = 0.25
_FULL_MAX_DELAY_SECONDS: Final = 2.0


def backoff_delay(failures: int, *, first: float, cap: float, jitter: float | None = None) -> float:
    """Seconds to wait after `failures` consecutive failures: `first`, doubling up to `cap`.

    Jitter within the upper half keeps a fleet of workers (or a batch of retried emails) from
    coming back in lockstep, while never waiting less than half the nominal delay. `jitter`
    (0 to 1) picks the point in that half; by default a random one.
    """
    exponent = min(max(failures - 1, 0), 62)  # 2.0**1024 would overflow long before any cap
    ceiling: float = min(cap, first * 2.0**exponent)
    if jitter is None:
        jitter = random.random()  # noqa: S311 - spreading retries, not a secret
    return ceiling * (0.5 + 0.5 * jitter)


def redis_retry_delay(failures: int) -> float:
    """Seconds to wait for Redis after `failures` consecutive failures."""
    return backoff_delay(failures, first=_REDIS_FIRST_DELAY_SECONDS, cap=_REDIS_MAX_DELAY_SECONDS)


def _full_retry_delay(refusals: int) -> float:
    return backoff_delay(refusals, first=_FULL_FIRST_DELAY_SECONDS, cap=_FULL_MAX_DELAY_SECONDS)


class MemoryState:
    """Whether Redis refuses writes for memory, as the loops of this process last saw it."""

    def __init__(self) -> None:
        self.full_since: float | None = None  # monotonic clock

    def refused(self, full: RedisFull, what: str) -> None:
        """A write was refused: log the condition with Redis's figures if it is new."""
        if self.full_since is not None:
            return
        self.full_since = time.monotonic()
        log.error(
            "redis_out_of_memory",
            operation=what,
            used_memory=full.used_memory,
            maxmemory=full.maxmemory,
            maxmemory_policy=full.policy,
            problem="Redis is at maxmemory and refuses writes that add data: the worker goes "
            "on sending and acknowledging (which frees memory) and holds the retries, dead "
            "letters and promotions it cannot write until there is room",
        )

    def written(self, what: str) -> None:
        """A write refused before went through: log the end of the condition once."""
        if self.full_since is None:
            return
        full_for = time.monotonic() - self.full_since
        self.full_since = None
        log.info("redis_memory_available", operation=what, full_for_s=round(full_for, 1))


# One for the process: the heartbeat, the upkeep loops and every delivery share it.
MEMORY: Final = MemoryState()


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a Redis failure worth waiting out."""
    if isinstance(exc, TRANSIENT_REDIS_ERRORS):
        return True
    return isinstance(exc, RedisClusterException) and isinstance(
        exc.__cause__, TRANSIENT_REDIS_ERRORS
    )


async def retry_while_unavailable(
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    while_full: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """Await `call()` until it does not fail with a transient Redis error or `RedisFull`.

    Cancellable. `while_full` runs between two tries refused for memory (a delivery uses it to
    keep its entry claimed while its settle waits).
    """
    failures = refusals = 0
    while True:
        try:
            result = await call()
        except (AuthenticationError, AuthorizationError):
            raise  # wrong credentials do not heal by waiting: fail loudly
        except RedisFull as full:
            refusals += 1
            MEMORY.refused(full, what)
            await asyncio.sleep(_full_retry_delay(refusals))
            if while_full is not None:
                await _best_effort(while_full)
            continue
        except _MAYBE_TRANSIENT as exc:
            if not is_transient(exc):
                raise
            failures += 1
            delay = redis_retry_delay(failures)
            log.warning(
                "redis_unavailable",
                operation=what,
                error=type(exc).__name__,
                failures=failures,
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)
            continue
        if refusals:
            MEMORY.written(what)
        if failures:
            log.info("redis_available", operation=what, failures=failures)
        return result


async def _best_effort(step: Callable[[], Awaitable[object]]) -> None:
    """A side step while waiting; the next try of the main call will meet any lasting fault."""
    try:
        await step()
    except RedisFull:
        return
    except _MAYBE_TRANSIENT as exc:
        if not is_transient(exc):
            raise
