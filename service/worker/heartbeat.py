"""The worker's heartbeat: what it is doing, since when, and what it has done, kept in Redis.

Every `WORKER_HEARTBEAT_SECONDS` the worker writes one JSON record under its consumer name in
the queue's `{q}:workers` hash; `python -m service.admin health` reads them and calls a worker
live while its record is fresher than three intervals. A clean stop removes the record; a
killed worker's record stays, marked dead, until `consumers prune` clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable

import orjson
import structlog

from ..errors import RedisFull
from ..store import QueueStore
from .backoff import retry_while_unavailable
from .metrics import WorkerMetrics

__all__ = ["Heartbeat"]

log = structlog.get_logger("service.worker")


class Heartbeat:
    """Publishes one worker's state and counts every `interval` seconds."""

    def __init__(
        self,
        store: QueueStore,
        consumer: str,
        metrics: WorkerMetrics,
        *,
        interval: float,
        state: Callable[[], str],
        smtp_connections: Callable[[], dict[str, int]],
        relays: Callable[[], dict[str, str]],
    ) -> None:
        self._store = store
        self._consumer = consumer
        self._metrics = metrics
        self._interval = interval
        self._state = state
        self._smtp_connections = smtp_connections
        # Each relay's name and state (up or down); its counts come from the metrics.
        self._relays = relays
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
        relays = self._metrics.relay_report(self._relays())
        record = {
            "consumer": self._consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": state,
            "state_since": round(self._state_since, 3),
            "started_at": round(self._started_at, 3),
            "beat_at": round(now, 3),
            "interval_s": self._interval,
            "outcomes": dict(self._metrics.outcomes),
            "relays": relays,
        }
        await self._store.write_heartbeat(self._consumer, orjson.dumps(record))
        await self._write_minutes()
        if not self._metrics.serving:
            return  # the queue's gauges are for Prometheus only: no Redis reads for nothing
        sizes = await self._store.sizes()
        group = await self._store.group()
        self._metrics.observe_queue(
            sizes,
            pending=group.pending if group else 0,
            lag=group.lag if group else None,
            smtp=self._smtp_connections(),
            paused=state == "paused",
            relays=relays,
        )

    async def _write_minutes(self) -> None:
        """Add what this worker did since the last beat to the queue's minute history."""
        counts, peaks = self._metrics.minutes.take()
        if not counts and not peaks:
            return
        try:
            await self._store.add_minutes(self._consumer, counts, peaks)
        except BaseException:
            self._metrics.minutes.put_back(counts, peaks)
            raise

    async def remove(self) -> None:
        """Delete the record: this worker stopped on purpose.

        Its last counts go first, if Redis takes them: at maxmemory they are dropped (a
        chart's minute, not a task), and the record is removed all the same.
        """
        with contextlib.suppress(RedisFull):
            await self._write_minutes()
        await self._store.remove_heartbeats(self._consumer)
