"""Riding out Redis outages: retry a call with capped exponential backoff until it succeeds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import structlog
from redis.exceptions import AuthenticationError, AuthorizationError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["backoff_delay", "retry_while_unavailable"]

T = TypeVar("T")

log = structlog.get_logger("service.worker")

# Failures worth waiting out: Redis restarting, failing over (a replica answers READONLY until
# it is promoted) or briefly unreachable.
TRANSIENT_REDIS_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
_FIRST_DELAY_SECONDS: Final = 0.5
_MAX_DELAY_SECONDS: Final = 15.0


def backoff_delay(failures: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling, capped, jittered.

    Full jitter in the upper half keeps a fleet of workers from reconnecting in lockstep.
    """
    ceiling: float = min(_MAX_DELAY_SECONDS, _FIRST_DELAY_SECONDS * 2.0 ** (failures - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


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
            delay = backoff_delay(failures)
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
