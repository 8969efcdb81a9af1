"""The worker's side of the Redis Stream: reading, claiming and recording each entry's fate.

Every fate write is one MULTI/EXEC transaction: acknowledging also deletes the entry (the
stream holds only live work), and dead-lettering adds the entry to the dead-letter stream,
acknowledges and deletes it, so no crash can leave a task both dead and live, or neither.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..keys import CONSUMER_GROUP, QueueKeys

__all__ = ["Entry", "TaskStream"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry handed to this consumer, and how often Redis has delivered it."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int


class TaskStream:
    """The stream of one queue, as seen by the consumer named `consumer`."""

    def __init__(self, redis: Redis, keys: QueueKeys, consumer: str) -> None:
        self._redis = redis
        self._stream = keys.stream
        self._dead = keys.dead
        self.consumer = consumer

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless they exist.

        A new group starts at id 0 so entries enqueued before the first worker ever started
        are delivered too.
        """
        try:
            await self._redis.xgroup_create(self._stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` entries never delivered before, waiting at most `block_ms` for one."""
        # redis-py types replies as unions of every protocol's shape; RESP2 is pinned, so the
        # shapes below are the only ones that arrive.
        try:
            reply: Any = await self._redis.xreadgroup(
                CONSUMER_GROUP, self.consumer, {self._stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            await self._recreate_group_if_gone(exc)
            return []
        if not reply:
            return []
        return [Entry(_text(eid), fields, 1) for eid, fields in reply[0][1]]

    async def take_own_pending(self, count: int) -> list[Entry]:
        """Entries still pending under this consumer's name (left by an earlier run of it)."""
        pending: Any = await self._redis.xpending_range(
            self._stream, CONSUMER_GROUP, "-", "+", count, consumername=self.consumer
        )
        ids: list[Any] = [_text(item["message_id"]) for item in pending]
        if not ids:
            return []
        claimed: Any = await self._redis.xclaim(
            self._stream, CONSUMER_GROUP, self.consumer, min_idle_time=0, message_ids=ids
        )
        return await self._with_deliveries(ids, claimed)

    async def claim_stale(
        self, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        """Take over up to `count` entries idle for `min_idle_ms` under any consumer.

        Returns the cursor to pass next time ("0-0" once the whole backlog was scanned).
        """
        try:
            reply: Any = await self._redis.xautoclaim(
                self._stream, CONSUMER_GROUP, self.consumer, min_idle_ms, cursor, count=count
            )
        except ResponseError as exc:
            await self._recreate_group_if_gone(exc)
            return "0-0", []
        # Redis 7 adds a third element: ids deleted while pending, which it has already dropped
        # from the pending list; Redis 6.2 replies with two and leaves a nil entry instead.
        next_cursor, claimed = _text(reply[0]), reply[1]
        ids = [_text(eid) for eid, _ in claimed if eid is not None]
        return next_cursor, await self._with_deliveries(ids, claimed)

    async def _recreate_group_if_gone(self, exc: ResponseError) -> None:
        """Someone deleted the stream or the group (FLUSHDB, DEL): start over, or re-raise."""
        if "NOGROUP" not in str(exc):
            raise exc
        await self.ensure_group()

    async def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete entries whose email the SMTP server accepted (atomic)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, CONSUMER_GROUP, *entry_ids)
            pipe.xdel(self._stream, *entry_ids)
            await pipe.execute()

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Move `entry` to the dead-letter stream with why and when (atomic)."""
        record: dict[Any, Any] = dict(entry.fields)
        record.update(
            {
                "dead_reason": reason,
                "dead_at": str(time.time_ns() // 1_000_000),
                "dead_entry_id": entry.entry_id,
                "dead_deliveries": str(entry.deliveries),
                "dead_consumer": self.consumer,
            }
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self._dead, record)
            pipe.xack(self._stream, CONSUMER_GROUP, entry.entry_id)
            pipe.xdel(self._stream, entry.entry_id)
            await pipe.execute()

    async def _with_deliveries(self, ids: list[str], claimed: list[Any]) -> list[Entry]:
        """Pair claimed entries with their delivery counts; drop ids deleted while pending."""
        fields_by_id = {_text(eid): fields for eid, fields in claimed if eid is not None}
        live = [(eid, fields) for eid in ids if (fields := fields_by_id.get(eid)) is not None]
        gone = [eid for eid in ids if fields_by_id.get(eid) is None]
        async with self._redis.pipeline(transaction=False) as pipe:
            for eid, _ in live:
                pipe.xpending_range(self._stream, CONSUMER_GROUP, eid, eid, 1)
            if gone:
                # Nothing left to send: clear them from the pending list for good.
                pipe.xack(self._stream, CONSUMER_GROUP, *gone)
            replies = await pipe.execute()
        entries = []
        for (eid, fields), pending in zip(live, replies, strict=False):
            deliveries = pending[0]["times_delivered"] if pending else 1
            entries.append(Entry(eid, fields, deliveries))
        return entries


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
