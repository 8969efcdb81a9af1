"""The worker's heartbeat: what it is doing, since when, and what it has done, kept in Redis.

Every `WORKER_HEARTBEAT_SECONDS` the worker writes one JSON record under its consumer name in
the queue's `{q}:workers` hash; `python -m service.admin health` reads them and calls a worker
live while its record is fresher than three intervals. A clean stop removes the record; a
killed worker's record stays, marked dead, until `consumers prune` clears it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Final

import orjson
import structlog
from redis.asyncio import Redis

from ..keys import QueueKeys
from .backoff import TRANSIENT_REDIS_ERRORS, retry_while_unavailable
from .metrics import WorkerMetrics
from .stream import TaskStream

__all__ = ["Heartbeat"]

log = structlog.get_logger("service.worker")

# Removing the record on the way out must not hold up the exit when Redis is gone.
_REMOVE_TIMEOUT_SECONDS: Final = 2.0


class Heartbeat:
    """Publishes one worker's state and counts every `interval` seconds."""

    def __init__(
        self,
        redis: Redis,
        keys: QueueKeys,
        stream: TaskStream,
        metrics: WorkerMetrics,
        *,
        interval: float,
        state: Callable[[], str],
        smtp_connections: Callable[[], dict[str, int]],
    ) -> None:
        self._redis = redis
        self._key = keys.workers
        self._stream = stream
        self._metrics = metrics
        self._interval = interval
        self._state = state
        self._smtp_connections = smtp_connections
        self._started_at = time.time()
        self._last_state = ""
        self._state_since = self._started_at

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            await retry_while_unavailable("heartbeat", self.beat)
            await asyncio.sleep(self._interval)

    async def beat(self) -> None:
        """Write the record now (and refresh the Prometheus gauges, when they are served)."""
        now = time.time()
        state = self._state()
        if state != self._last_state:
            self._last_state, self._state_since = state, now
        record = {
            "consumer": self._stream.consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": state,
            "state_since": round(self._state_since, 3),
            "started_at": round(self._started_at, 3),
            "beat_at": round(now, 3),
            "interval_s": self._interval,
            "outcomes": dict(self._metrics.outcomes),
        }
        await self._redis.hset(self._key, self._stream.consumer, orjson.dumps(record))
        if not self._metrics.serving:
            return  # the queue's gauges are for Prometheus only: no Redis reads for nothing
        sizes = await self._stream.sizes()
        pending, lag = await self._stream.group_counts()
        self._metrics.observe_queue(
            sizes,
            pending=pending,
            lag=lag,
            smtp=self._smtp_connections(),
            paused=state == "paused",
        )

    async def remove(self) -> None:
        """Delete the record: this worker stopped on purpose (best effort)."""
        try:
            async with asyncio.timeout(_REMOVE_TIMEOUT_SECONDS):
                await self._redis.hdel(self._key, self._stream.consumer)
        except (TimeoutError, *TRANSIENT_REDIS_ERRORS):
            log.info("heartbeat_left_behind", consumer=self._stream.consumer)
