"""The producer: what an asyncio app imports to put emails on the queue.

    async with Producer.from_url(redis_url, queue="emails") as producer:
        task_id = await producer.enqueue(EmailTask(to="a@example.com", subject="Hi", text="..."))

Importing this module never imports the worker or any SMTP code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from redis.asyncio import Redis

from ..connection import connect_redis
from ..keys import QueueKeys
from ..task import EmailTask
from ..wire import encode_entry

__all__ = ["Producer"]


class Producer:
    """Enqueues `EmailTask`s on the stream of one queue.

    Build it around a client the app already holds (`Producer(client, queue=...)`; the app keeps
    ownership and closes it) or from a URL (`Producer.from_url(...)`, used as an async context
    manager, which closes the client it made).
    """

    def __init__(self, redis: Redis, *, queue: str = "emails") -> None:
        self._redis = redis
        self._keys = QueueKeys(queue)
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, *, queue: str = "emails") -> Self:
        """A producer with its own client for `url` (`redis://` or `rediss://`)."""
        producer = cls(connect_redis(url), queue=queue)
        producer._owns_client = True
        return producer

    @property
    def queue(self) -> str:
        """The name of the queue this producer feeds."""
        return self._keys.queue

    async def enqueue(self, task: EmailTask) -> str:
        """Add `task` to the queue in one round trip; return its task id."""
        task_id, fields = _prepare(task)
        await self._redis.xadd(self._keys.stream, fields)  # type: ignore[arg-type]
        return task_id

    async def enqueue_many(self, tasks: Iterable[EmailTask]) -> list[str]:
        """Add every task in one round trip (a pipeline); return their ids in the same order.

        Every task is validated before anything is sent. The pipeline is not a transaction: if
        the connection drops midway, a prefix of the batch may be enqueued, so callers that
        retry the whole batch can enqueue some tasks twice.
        """
        prepared = [_prepare(task) for task in tasks]
        if not prepared:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, fields in prepared:
                pipe.xadd(self._keys.stream, fields)  # type: ignore[arg-type]
            await pipe.execute()
        return [task_id for task_id, _ in prepared]

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


def _prepare(task: EmailTask) -> tuple[str, dict[str, bytes]]:
    if not isinstance(task, EmailTask):
        raise TypeError(f"expected an EmailTask, got {type(task).__name__}")
    task_id = uuid.uuid4().hex
    return task_id, encode_entry(task, task_id, time.time_ns() // 1_000_000)
