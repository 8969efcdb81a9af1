"""The producer: what an asyncio app imports to put emails on the queue.

    async with Producer.from_url(redis_url, queue="emails") as producer:
        task_id = await producer.enqueue(EmailTask(to="a@example.com", subject="Hi", text="..."))
        await producer.enqueue(reminder, delay=timedelta(hours=1), idempotency_key="remind:42")

Importing this module never imports the worker or any SMTP code.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

from redis.exceptions import RedisError

from ..connection import (
    PRODUCER_CONNECT_TIMEOUT_SECONDS,
    PRODUCER_TIMEOUT_SECONDS,
    AnyRedis,
    connect_redis_for_producer,
)
from ..keys import QueueKeys
from ..status import DEFAULT_STATUS_TTL, CancelResult, TaskStatus
from ..store import NewTask, QueueStore, replies
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
from .sync import SyncProducer

__all__ = [
    "DEFAULT_IDEMPOTENCY_WINDOW",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_EMAIL_BYTES",
    "Producer",
    "SyncProducer",
]


class Producer:
    """Enqueues `EmailTask`s on one queue.

    Build it around a client the app already holds (`Producer(client, queue=...)`; the app keeps
    ownership and closes it) or from a URL (`Producer.from_url(...)`, used as an async context
    manager, which closes the client it made).

    `max_backlog` bounds the tasks waiting in the queue (live and delayed): past it, enqueueing
    raises `QueueFull` instead of filling Redis. An idempotency key is remembered for
    `idempotency_window`; a task's status (`status`, `cancel`) for `status_ttl` after its last
    change (zero: this producer writes none). An email larger than `max_email_bytes` (bodies,
    and attachments as base64) raises `EmailTooLarge` before anything is sent. Every failure is
    an `EnqueueError` (`QueueFull`, `QueueUnavailable`, `EmailTooLarge`), whose `maybe_enqueued`
    says whether the task may be in the queue all the same. For a producer shared by the
    threads of a sync app, see `SyncProducer`.
    """

    def __init__(
        self,
        redis: AnyRedis,
        *,
        queue: str = "emails",
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
        max_email_bytes: int = DEFAULT_MAX_EMAIL_BYTES,
        status_ttl: timedelta = DEFAULT_STATUS_TTL,
    ) -> None:
        self._limits = Limits.checked(max_backlog, idempotency_window, max_email_bytes)
        self._redis = redis
        self._store = QueueStore(redis, QueueKeys(queue), status_ttl=status_ttl)
        self._backlog = BacklogEstimate(self._limits.max_backlog)
        self._owns_client = False

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
        """A producer with its own client for `url` (`redis://`, `rediss://` or `unix://`).

        `timeout` bounds each command, `connect_timeout` each connection: a hung or unreachable
        Redis fails an enqueue with `QueueUnavailable` within about their sum.
        """
        client = connect_redis_for_producer(url, timeout=timeout, connect_timeout=connect_timeout)
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

    async def enqueue(
        self,
        task: EmailTask,
        *,
        send_at: datetime | None = None,
        delay: Delay | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Add `task` to the queue in one round trip; return its task id.

        `send_at` (timezone-aware) or `delay` (seconds or a timedelta) schedules it for later.
        With `idempotency_key`, a key already used within the idempotency window enqueues
        nothing and returns the id of the task first enqueued with it. Raises `QueueFull` when
        the backlog is at `max_backlog`, `QueueUnavailable` when Redis cannot be reached or does
        not answer in time.
        """
        new = new_tasks(
            [task],
            send_at=send_at,
            delay=delay,
            idempotency_key=idempotency_key,
            queue=self.queue,
            max_email_bytes=self._limits.max_email_bytes,
        )
        ids = await self._add(new)
        return ids[0]

    async def enqueue_many(
        self,
        tasks: Iterable[EmailTask],
        *,
        send_at: datetime | None = None,
        delay: Delay | None = None,
    ) -> list[str]:
        """Add every task in one round trip and one atomic step; return their ids in order.

        Every task is validated before anything is sent, and either all are enqueued or (on
        `QueueFull` or an error) none. Redis runs the batch as one step, so keep batches to a
        few thousand tasks.
        """
        new = new_tasks(
            tasks,
            send_at=send_at,
            delay=delay,
            queue=self.queue,
            max_email_bytes=self._limits.max_email_bytes,
        )
        return await self._add(new) if new else []

    async def _add(self, tasks: list[NewTask]) -> list[str]:
        """Enqueue `tasks`: checked by the ENQUEUE script, or plain XADDs far below the limit.

        Tasks due now and without an idempotency key skip the script while this producer's
        view of the backlog says the limit is far off (see `backlog`).
        """
        plain = is_plain(tasks) and not self._store.waits_for_replicas
        if plain and self._backlog.allows_plain_add(time.monotonic(), len(tasks)):
            await self._store.add_now(tasks)
            self._backlog.add(len(tasks))
            return [task.task_id for task in tasks]
        reply = await self._store.enqueue(
            tasks, max_backlog=self._limits.max_backlog, window_ms=self._limits.window_ms
        )
        if reply.backlog is not None:
            self._backlog.observe(reply.backlog, time.monotonic())
        return reply.ids

    async def status(self, task_id: str) -> TaskStatus:
        """Where task `task_id` is now: queued, scheduled, sending, retrying, sent, dead,
        cancelled, or unknown (never seen, or its record expired: see `status_ttl`), with what
        goes with that state and the task's tags. Raises `QueueUnavailable` when Redis cannot
        be reached or does not answer in time.
        """
        try:
            return await self._store.status(task_id)
        except RedisError as exc:
            raise replies.unavailable(self.queue, exc, action="changed", writes=False) from exc

    async def cancel(self, task_id: str) -> CancelResult:
        """Cancel task `task_id` if no worker has taken it yet, in one atomic step.

        A queued, scheduled or retrying task is cancelled: it will never be sent and its status
        says cancelled. Otherwise `CancelResult.was` says why not (sending, sent, dead,
        cancelled, unknown). Raises `QueueUnavailable` when Redis cannot be reached or does not
        answer in time (its `maybe_enqueued` then says whether the cancel may have happened).
        """
        try:
            return await self._store.cancel(task_id)
        except RedisError as exc:
            raise replies.unavailable(self.queue, exc, action="cancelled", writes=True) from exc

    async def aclose(self) -> None:
        """Close the Redis client if this producer created it."""
        if self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Producer(queue={self.queue!r})"
