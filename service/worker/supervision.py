"""What the worker tells its supervisor (systemd), and the start-up checks that come first.

- `READY=1` once Redis answered a PING, its configuration was looked at and the Redis user's
  permissions were found sufficient (or could not be checked): a unit ordered after this one
  starts only when the queue is reachable. The worker takes no entry before that.
- `WATCHDOG=1` at half of `WATCHDOG_USEC`, from the event loop (see `Notifier.watchdog`).
- `STOPPING=1` as soon as a stop is requested, so `systemctl` shows "deactivating" for the
  whole drain instead of an unexplained wait.

Until Redis answers, the reason it does not (refused, TLS verification failed, wrong password)
is logged whenever it changes: that is the line an operator needs when a deployment never
becomes ready.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

import structlog
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

from ..connection import AnyRedis, login_of
from ..store import QueueStore
from .backoff import redis_retry_delay
from .notify import Notifier, watchdog_interval
from .redis_check import check_redis_access, check_redis_config
from .shutdown import Shutdown, cancel_and_wait

__all__ = ["Supervision"]

log = structlog.get_logger("service.worker")

_REASON_MAX_CHARS: Final = 300


class Supervision:
    """Async context manager around the worker's run: readiness, watchdog, stopping."""

    def __init__(
        self,
        redis: AnyRedis,
        store: QueueStore,
        shutdown: Shutdown,
        *,
        status: str,
        notifier: Notifier | None = None,
        limits: bool = False,
        domains: bool = False,
    ) -> None:
        self._redis = redis
        self._limits = limits  # the shared limiter's commands are checked too
        self._domains = domains  # and the per-domain limiter's
        self._store = store
        self._shutdown = shutdown
        self._status = status
        self._notifier = notifier or Notifier.from_environ()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Supervision:
        interval = watchdog_interval()
        if interval is not None and self._notifier.enabled:
            self._tasks.append(asyncio.create_task(self._notifier.watchdog(interval)))
        self._tasks.append(asyncio.create_task(self._announce_stopping()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await cancel_and_wait(self._tasks, "worker stopped")

    async def start_up(self) -> int | None:
        """Wait for Redis, look at it, then send READY. None: the worker may start (also when
        a stop was requested meanwhile: its run then stops at once); else the exit code, 2 for
        a missing permission, 1 for credentials Redis refuses."""
        checks = asyncio.create_task(self._checks(), name="start-up checks")
        stop = asyncio.create_task(self._shutdown.requested.wait())
        try:
            await asyncio.wait([checks, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([checks, stop], "stop requested during start-up")
        if checks.cancelled():
            return None
        if (error := checks.exception()) is not None:
            log.error("worker_failed", exc_info=error)
            return 1
        return None if checks.result() else 2

    async def _checks(self) -> bool:
        """Whether the worker may start."""
        self._notifier.status("connecting to Redis")
        await self._wait_for_redis()
        await check_redis_config(self._redis, self._store.keys.stream)
        if not await check_redis_access(self._store, limits=self._limits, domains=self._domains):
            return False
        if not self._shutdown.requested.is_set():  # READY after STOPPING would confuse systemd
            self._notifier.ready(self._status)
        # Debug only: the first lines of a run are "worker_starting", "worker_started".
        log.debug("worker_ready", notified=self._notifier.enabled)
        return True

    async def _announce_stopping(self) -> None:
        await self._shutdown.requested.wait()
        self._notifier.stopping()

    async def _wait_for_redis(self) -> None:
        failures = 0
        last_reason = None
        while True:
            try:
                await self._redis.ping()
            except (RedisError, OSError) as exc:
                failures += 1
                reason = self._describe(exc)
                if reason != last_reason:  # once per distinct cause, not once per retry
                    log.warning("redis_not_ready", reason=reason, failures=failures)
                    self._notifier.status(f"waiting for Redis: {reason}")
                    last_reason = reason
                if isinstance(exc, AuthenticationError | AuthorizationError):
                    raise  # wrong credentials do not heal by waiting
                await asyncio.sleep(redis_retry_delay(failures))
                continue
            return

    def _describe(self, exc: BaseException) -> str:
        """`exc` as one line, with the Redis password cut out should a message ever echo it."""
        reason = f"{type(exc).__name__}: {exc}"[:_REASON_MAX_CHARS]
        _, password = login_of(self._redis)
        if isinstance(password, str) and password:
            reason = reason.replace(password, "***")
        return reason
