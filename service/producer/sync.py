"""The producer for sync apps (Flask, Django, any WSGI server): no event loop involved.

    producer = SyncProducer.from_url(redis_url, queue="emails")   # once, at import or start-up
    task_id = producer.enqueue(EmailTask(to="a@example.com", subject="Hi", text="..."))

One producer serves every thread of a process, and survives `fork`: pre-fork servers
(gunicorn, uWSGI) may create it before forking, since redis-py's pool opens new connections in
the child rather than share the parent's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

from redis.exceptions import RedisError

from ..connection import (
    PRODUCER_CONNECT_TIMEOUT_SECONDS,
    PRODUCER_TIMEOUT_SECONDS,
    AnySyncRedis,
    connect_sync_redis_for_producer,
)
from ..keys import QueueKeys
from ..status import DEFAULT_STATUS_TTL, CancelResult, TaskStatus
from ..store import NewTask, replies
from ..store.sync import SyncQueueStore
from ..task import EmailTask
from .backlog import BacklogEstimate
from .prepare import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_MAX_BACKLOG,
    DEFAULT_MAX_EMAIL_BYTES,
    Delay,
    Limits,
    is_plain,
    new_tasks,
)

__all__ = ["SyncProducer"]


class SyncProducer:
    """`Producer`'s methods, options, validation and wire format, on redis-py's sync client.

    Build it around the app's own client (`SyncProducer(client, queue=...)`; the app closes it)
    or from a URL (`SyncProducer.from_url(...)`, closed by `close()` or a `with` block). Safe to
    share between threads, and across `fork`.
    """

    def __init__(
        self,
        redis_client: AnySyncRedis,
        *,
        queue: str = "emails",
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        max_email_bytes: int = DEFAULT_MAX_EMAIL_BYTES,
        status_ttl: timedelta = DEFAULT_STATUS_TTL,
    ) -> None:
        self._limits = Limits.checked(max_backlog, idempotency_window, max_email_bytes)
        self._redis = redis_client
        self._store = SyncQueueStore(redis_client, QueueKeys(queue), status_ttl=status_ttl)
        self._owns_client = False
        self._start_estimate()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        queue: str = "emails",
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        max_email_bytes: int = DEFAULT_MAX_EMAIL_BYTES,
        status_ttl: timedelta = DEFAULT_STATUS_TTL,
        timeout: float = PRODUCER_TIMEOUT_SECONDS,
        connect_timeout: float = PRODUCER_CONNECT_TIMEOUT_SECONDS,
    ) -> Self:
        """As `Producer.from_url`."""
        client = connect_sync_redis_for_producer(
            url, timeout=timeout, connect_timeout=connect_timeout
        )
        producer = cls(
            client,
            queue=queue,
            max_backlog=max_backlog,
            idempotency_window=idempotency_window,
            max_email_bytes=max_email_bytes,
            status_ttl=status_ttl,
        )
        producer._owns_client = True
        return producer

    @property
    def queue(self) -> str:
        """The name of the queue this producer feeds."""
        return self._store.queue

    def enqueue(
        self,
        task: EmailTask,
        *,
        send_at: datetime | None = None,
        delay: Delay | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """As `Producer.enqueue`."""
        new = new_tasks(
            [task],
            send_at=send_at,
            delay=delay,
            idempotency_key=idempotency_key,
            queue=self.queue,
            max_email_bytes=self._limits.max_email_bytes,
        )
        return self._add(new)[0]

    def enqueue_many(
        self,
        tasks: Iterable[EmailTask],
        *,
        send_at: datetime | None = None,
        delay: Delay | None = None,
    ) -> list[str]:
        """As `Producer.enqueue_many`."""
        new = new_tasks(
            tasks,
            send_at=send_at,
            delay=delay,
            queue=self.queue,
            max_email_bytes=self._limits.max_email_bytes,
        )
        return self._add(new) if new else []

    def _add(self, tasks: list[NewTask]) -> list[str]:
        """As `Producer._add`; the backlog estimate is shared by this process's threads."""
        estimate, lock = self._estimate()
        if is_plain(tasks) and not self._store.waits_for_replicas:
            with lock:
                plain = estimate.allows_plain_add(time.monotonic(), len(tasks))
                if plain:  # counted now: other threads deciding meanwhile see these tasks
                    estimate.add(len(tasks))
            if plain:
                self._store.add_now(tasks)
                return [task.task_id for task in tasks]
        reply = self._store.enqueue(
            tasks, max_backlog=self._limits.max_backlog, window_ms=self._limits.window_ms
        )
        if reply.backlog is not None:
            with lock:
                estimate.observe(reply.backlog, time.monotonic())
        return reply.ids

    def status(self, task_id: str) -> TaskStatus:
        """As `Producer.status`."""
        try:
            return self._store.status(task_id)
        except RedisError as exc:
            raise replies.unavailable(self.queue, exc, action="changed", writes=False) from exc

    def cancel(self, task_id: str) -> CancelResult:
        """As `Producer.cancel`."""
        try:
            return self._store.cancel(task_id)
        except RedisError as exc:
            raise replies.unavailable(self.queue, exc, action="cancelled", writes=True) from exc

    def _start_estimate(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._backlog = BacklogEstimate(self._limits.max_backlog)

    def _estimate(self) -> tuple[BacklogEstimate, threading.Lock]:
        """The backlog estimate and its lock, fresh in a forked child: a lock some thread of
        the parent held at the fork would never be released there."""
        if os.getpid() != self._pid:
            self._start_estimate()
        return self._backlog, self._lock

    def close(self) -> None:
        """Close the Redis client if this producer created it."""
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SyncProducer(queue={self.queue!r})"
