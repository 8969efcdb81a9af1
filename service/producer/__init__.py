"""The producer: what an asyncio app imports to put emails on the queue.

    async with Producer.from_url(redis_url, queue="emails") as producer:
        task_id = await producer.enqueue(EmailTask(to="a@example.com", subject="Hi", text="..."))
        await producer.enqueue(reminder, delay=timedelta(hours=1), idempotency_key="remind:42")

Importing this module never imports the worker or any SMTP code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final, Self

from redis.asyncio import Redis

from ..connection import connect_redis
from ..keys import QueueKeys
from ..store import NewTask, QueueStore
from ..task import EmailTask
from ..wire import encode_entry
from .backlog import BacklogEstimate

__all__ = ["DEFAULT_IDEMPOTENCY_WINDOW", "DEFAULT_MAX_BACKLOG", "Producer"]

# About 150 MB of 1 KB emails: far below what a queue's Redis should hold, far above a healthy
# backlog. Size it to your Redis (`max_backlog=`); None disables the check.
DEFAULT_MAX_BACKLOG: Final = 100_000
DEFAULT_IDEMPOTENCY_WINDOW: Final = timedelta(hours=24)
_MAX_DELAY: Final = timedelta(days=366)
_MAX_KEY_CHARS: Final = 200

Delay = timedelta | float | int


class Producer:
    """Enqueues `EmailTask`s on one queue.

    Build it around a client the app already holds (`Producer(client, queue=...)`; the app keeps
    ownership and closes it) or from a URL (`Producer.from_url(...)`, used as an async context
    manager, which closes the client it made).

    `max_backlog` bounds the tasks waiting in the queue (live and delayed): past it, enqueueing
    raises `QueueFull` instead of filling Redis. An idempotency key is remembered for
    `idempotency_window`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        queue: str = "emails",
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        if max_backlog is not None and max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1 (or None), not {max_backlog}")
        if idempotency_window <= timedelta(0):
            raise ValueError("idempotency_window must be positive")
        self._redis = redis
        self._store = QueueStore(redis, QueueKeys(queue))
        self._max_backlog = max_backlog or 0
        self._window_ms = int(idempotency_window.total_seconds() * 1000)
        self._backlog = BacklogEstimate(self._max_backlog)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        queue: str = "emails",
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        idempotency_window: timedelta = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> Self:
        """A producer with its own client for `url` (`redis://` or `rediss://`)."""
        producer = cls(
            connect_redis(url),
            queue=queue,
            max_backlog=max_backlog,
            idempotency_window=idempotency_window,
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
        the backlog is at `max_backlog`.
        """
        if idempotency_key is not None:
            _check_key(idempotency_key)
        new = _prepare(task, _due_ms(send_at, delay), idempotency_key)
        ids = await self._add([new])
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
        due_ms = _due_ms(send_at, delay)
        new = [_prepare(task, due_ms, None) for task in tasks]
        return await self._add(new) if new else []

    async def _add(self, tasks: list[NewTask]) -> list[str]:
        """Enqueue `tasks`: checked by the ENQUEUE script, or plain XADDs far below the limit.

        Tasks due now and without an idempotency key skip the script while this producer's
        view of the backlog says the limit is far off (see `backlog`).
        """
        plain = all(not task.due_ms and task.idempotency_key is None for task in tasks)
        if plain and self._backlog.allows_plain_add(time.monotonic(), len(tasks)):
            await self._store.add_now([task.fields for task in tasks])
            self._backlog.add(len(tasks))
            return [task.task_id for task in tasks]
        reply = await self._store.enqueue(
            tasks, max_backlog=self._max_backlog, window_ms=self._window_ms
        )
        if reply.backlog is not None:
            self._backlog.observe(reply.backlog, time.monotonic())
        return reply.ids

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


def _prepare(task: EmailTask, due_ms: int | None, idempotency_key: str | None) -> NewTask:
    """A task about to be enqueued, with its new id and its entry's fields."""
    if not isinstance(task, EmailTask):
        raise TypeError(f"expected an EmailTask, got {type(task).__name__}")
    task_id = uuid.uuid4().hex
    now_ms = time.time_ns() // 1_000_000
    fields = encode_entry(task, task_id, now_ms, due_ms=due_ms)
    due = due_ms if due_ms is not None and due_ms > now_ms else 0
    return NewTask(task_id, fields, due, idempotency_key)


def _due_ms(send_at: datetime | None, delay: Delay | None) -> int | None:
    """When a scheduled task is due (ms since the epoch), or None to send it now."""
    if send_at is not None and delay is not None:
        raise ValueError("give send_at or delay, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not 0 <= seconds <= _MAX_DELAY.total_seconds():
            raise ValueError(f"delay must be between 0 and {_MAX_DELAY.days} days")
        return time.time_ns() // 1_000_000 + int(seconds * 1000)
    if send_at is not None:
        if send_at.tzinfo is None or send_at.utcoffset() is None:
            raise ValueError("send_at must be timezone-aware (e.g. datetime.now(UTC))")
        if send_at - datetime.now(UTC) > _MAX_DELAY:
            raise ValueError(f"send_at must be within {_MAX_DELAY.days} days")
        return int(send_at.timestamp() * 1000)
    return None


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_CHARS:
        raise ValueError(f"idempotency_key must be a string of 1 to {_MAX_KEY_CHARS} characters")
    if not key.isprintable():
        raise ValueError("idempotency_key must not contain control characters")
