"""The enqueueing part of a queue's store on redis-py's sync client, for `SyncProducer`.

It builds the same script calls and reads the same replies as `QueueStore` (the shared builders
are in `scripts`, the error reading in `replies`); tests/integration/test_sync_producer.py proves
that both producers leave Redis in the same state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from ..errors import QueueFull
from ..keys import QueueKeys
from . import replies, scripts
from .scripts import EnqueueReply, NewTask

__all__ = ["SyncQueueStore"]


class SyncQueueStore:
    """Enqueueing on the queue `keys`, from threads (redis-py's sync client is thread-safe)."""

    def __init__(self, redis_client: redis.Redis, keys: QueueKeys) -> None:
        self._redis = redis_client
        self.keys = keys
        self._enqueue = redis_client.register_script(scripts.ENQUEUE)

    @property
    def queue(self) -> str:
        """The queue's name."""
        return self.keys.queue

    def enqueue(
        self, tasks: Sequence[NewTask], *, max_backlog: int, window_ms: int
    ) -> EnqueueReply:
        """As `QueueStore.enqueue`."""
        call = scripts.enqueue(self.keys, tasks, max_backlog=max_backlog, window_ms=window_ms)
        try:
            raw: Any = self._enqueue(keys=call.keys, args=call.args)
        except RedisError as exc:
            raise replies.enqueue_error(self.queue, exc) from exc
        reply = scripts.enqueue_reply(raw)
        if reply.full:
            raise QueueFull(self.queue, backlog=reply.backlog, limit=max_backlog)
        return reply

    def add_now(self, entries: Sequence[Mapping[str, bytes]]) -> None:
        """As `QueueStore.add_now`."""
        items = [cast("dict[FieldT, EncodableT]", dict(fields)) for fields in entries]
        try:
            if len(items) == 1:
                self._redis.xadd(self.keys.stream, items[0])
                return
            with self._redis.pipeline(transaction=True) as pipe:
                for fields in items:
                    pipe.xadd(self.keys.stream, fields)
                pipe.execute()
        except RedisError as exc:
            raise replies.enqueue_error(self.queue, exc) from exc
