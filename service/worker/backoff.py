"""Capped exponential backoff with jitter, and riding out Redis outages with it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import structlog
from redis.exceptions import AuthenticationError, AuthorizationError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "TRANSIENT_REDIS_ERRORS",
    "backoff_delay",
    "redis_retry_delay",
    "retry_while_unavailable",
]

T = TypeVar("T")

log = structlog.get_logger("service.worker")

# Failures worth waiting out: Redis restarting, failing over (a replica answers READONLY until
# it is promoted) or briefly unreachable.
TRANSIENT_REDIS_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
_REDIS_FIRST_DELAY_SECONDS: Final = 0.5
_REDIS_MAX_DELAY_SECONDS: Final = 15.0


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


async def retry_while_unavailable(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Await `call()` until it does not fail with a transient Redis error; cancellable."""
    failures = 0
    while True:
        try:
            result = await call()
        except (AuthenticationError, AuthorizationError):
            raise  # wrong credentials do not heal by waiting: fail loudly
        except TRANSIENT_REDIS_ERRORS as exc:
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
        if failures:
            log.info("redis_available", operation=what, failures=failures)
        return result
