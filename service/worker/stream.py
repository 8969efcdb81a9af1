"""The worker's side of the queue in Redis: reading, claiming and settling each entry.

Every fate write is one Lua script (`service.scripts`): acknowledging also deletes the entry
(the stream holds only live work), and a retry or a dead letter is added in the same step, so no
crash can leave a task both scheduled and live, or neither.

Settles that are due at the same time travel together: each is still its own script call (its
own atomic step, with its own reply), but all of them share one pipeline round trip. Nothing
waits to fill a batch: a settle goes out on the next turn of the event loop, together with the
ones that came meanwhile, and those that arrive while a batch is in flight form the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ..connection import text
from ..keys import CONSUMER_GROUP, QueueKeys
from ..scripts import FORGET_CONSUMER, PROMOTE_DUE, SETTLE

__all__ = ["SENT_RECORD_TTL_MS", "Entry", "QueueSizes", "Settled", "TaskStream"]

# A sent record outlives any retry copy it guards (its whole retry schedule, at the defaults).
SENT_RECORD_TTL_MS: Final = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry handed to this consumer, and how often Redis has delivered it."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int


@dataclass(frozen=True, slots=True)
class Settled:
    """What a settle did: `took_effect` is False when another worker had settled it first."""

    took_effect: bool
    dead_letters: int  # length of the dead-letter stream after adding a record, else 0


@dataclass(frozen=True, slots=True)
class QueueSizes:
    """Tasks in each place of a queue."""

    stream: int  # waiting or being sent
    delayed: int  # retries and scheduled sends not yet due
    dead: int


class TaskStream:
    """The stream of one queue, as seen by the consumer named `consumer`."""

    def __init__(self, redis: Redis, keys: QueueKeys, consumer: str) -> None:
        self._redis = redis
        self._keys = keys
        self._stream = keys.stream
        self.consumer = consumer
        self._settle = redis.register_script(SETTLE)
        # Settles waiting for the next pipeline: (keys and args, who waits for the reply).
        self._settles_due: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._settler: asyncio.Task[None] | None = None
        self._promote = redis.register_script(PROMOTE_DUE)
        self._forget = redis.register_script(FORGET_CONSUMER)

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
        return [Entry(text(eid), fields, 1) for eid, fields in reply[0][1]]

    async def take_own_pending(self, count: int) -> list[Entry]:
        """Entries still pending under this consumer's name (left by an earlier run of it)."""
        pending: Any = await self._redis.xpending_range(
            self._stream, CONSUMER_GROUP, "-", "+", count, consumername=self.consumer
        )
        ids: list[Any] = [text(item["message_id"]) for item in pending]
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
        next_cursor, claimed = text(reply[0]), reply[1]
        ids = [text(eid) for eid, _ in claimed if eid is not None]
        return next_cursor, await self._with_deliveries(ids, claimed)

    async def _recreate_group_if_gone(self, exc: ResponseError) -> None:
        """Someone deleted the stream or the group (FLUSHDB, DEL): start over, or re-raise."""
        if "NOGROUP" not in str(exc):
            raise exc
        await self.ensure_group()

    async def settle(
        self,
        entry: Entry,
        *,
        task_id: str = "",
        sent_record: bool = False,
        retry: tuple[int, Mapping[bytes, bytes]] | None = None,
        dead: Mapping[bytes, bytes] | None = None,
    ) -> Settled:
        """Record an entry's fate in one atomic step (`scripts.SETTLE`).

        The entry is acknowledged and deleted; `retry` (due ms, fields) schedules a copy in the
        delayed set and `dead` adds a dead-letter record. `sent_record` says the attempt sent
        the email to every recipient it had left: if another worker settled the entry first,
        a sent record keeps its retry copy from being sent again.
        """
        retry_items = _flatten(retry[1]) if retry else []
        keys = [
            self._keys.stream,
            self._keys.delayed,
            self._keys.delayed_entries,
            self._keys.dead,
            self._keys.sent(task_id or "-"),
        ]
        args = [
            CONSUMER_GROUP,
            entry.entry_id,
            task_id or "-",
            SENT_RECORD_TTL_MS if sent_record and task_id else 0,
            retry[0] if retry else 0,
            len(retry_items),
            *retry_items,
            *(_flatten(dead) if dead else []),
        ]
        reply = asyncio.get_running_loop().create_future()
        self._settles_due.append(([len(keys), *keys, *args], reply))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._send_settles(), name="settles")
        result: Any = await reply
        return Settled(took_effect=result[0] == 1, dead_letters=int(result[1]))

    async def _send_settles(self) -> None:
        """Send the settles due, one pipeline per batch, until none is left.

        Each waiting settle gets its own reply or error (a Redis outage fails the whole batch,
        and each settle's caller retries it as before).
        """
        load_script = loaded = False
        while self._settles_due:
            batch, self._settles_due = self._settles_due, []
            try:
                if load_script:  # Redis lost its scripts (a restart): load SETTLE again
                    await self._redis.script_load(SETTLE)
                    loaded = True
                replies = await self._run_settles([call for call, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to each waiting settle
                for _, reply in batch:
                    if not reply.done():
                        reply.set_exception(exc)
                continue
            except BaseException:
                for _, reply in batch:
                    reply.cancel()
                raise
            load_script = False
            for (call, reply), result in zip(batch, replies, strict=True):
                if reply.done():
                    continue  # its caller was cancelled meanwhile
                if isinstance(result, NoScriptError) and not loaded:
                    load_script = True
                    self._settles_due.append((call, reply))  # sent again once loaded
                elif isinstance(result, Exception):
                    reply.set_exception(result)
                else:
                    reply.set_result(result)

    async def _run_settles(self, calls: list[list[Any]]) -> list[Any]:
        """One EVALSHA per settle in one round trip; replies (or errors) in order."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(self._settle.sha, *call)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def was_sent(self, task_id: str) -> bool:
        """Whether a worker that lost a settle race recorded this task as sent."""
        return bool(await self._redis.exists(self._keys.sent(task_id)))

    async def promote_due(self, now_ms: int, limit: int) -> tuple[int, int | None]:
        """Move delayed tasks due by `now_ms` into the stream; return (moved, next due ms)."""
        reply: Any = await self._promote(
            keys=[self._keys.stream, self._keys.delayed, self._keys.delayed_entries],
            args=[now_ms, limit],
        )
        next_due = reply[1]
        return int(reply[0]), int(float(next_due)) if next_due else None

    async def sizes(self) -> QueueSizes:
        """How many tasks wait in the stream, the delayed set and the dead letters."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self._keys.stream)
            pipe.zcard(self._keys.delayed)
            pipe.xlen(self._keys.dead)
            stream, delayed, dead = await pipe.execute()
        return QueueSizes(stream=stream, delayed=delayed, dead=dead)

    async def group_counts(self) -> tuple[int, int | None]:
        """(pending, lag) of the consumer group; lag is None where Redis < 7 does not say."""
        try:
            groups: Any = await self._redis.xinfo_groups(self._stream)
        except ResponseError as exc:
            if "no such key" in str(exc):
                return 0, None
            raise
        for group in groups:
            if text(group["name"]) == CONSUMER_GROUP:
                return int(group["pending"]), group.get("lag")
        return 0, None

    async def forget_consumer(self) -> bool:
        """Leave the group if this consumer owns no pending entry; whether it left."""
        try:
            removed: Any = await self._forget(
                keys=[self._keys.stream], args=[CONSUMER_GROUP, self.consumer]
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # stopped before the group was ever created
                return False
            raise
        return bool(removed)

    async def _with_deliveries(self, ids: list[str], claimed: list[Any]) -> list[Entry]:
        """Pair claimed entries with their delivery counts; drop ids deleted while pending.

        An entry no longer pending when its count is read was settled after the claim: the
        delivery that held it (here or in another worker) finished between the two round trips,
        often after a Redis stall delayed its settle past the reclaim idle time. It is dropped,
        not sent again.
        """
        fields_by_id = {text(eid): fields for eid, fields in claimed if eid is not None}
        live = [(eid, fields) for eid in ids if (fields := fields_by_id.get(eid)) is not None]
        gone = [eid for eid in ids if fields_by_id.get(eid) is None]
        async with self._redis.pipeline(transaction=False) as pipe:
            for eid, _ in live:
                pipe.xpending_range(self._stream, CONSUMER_GROUP, eid, eid, 1)
            if gone:
                # Nothing left to send: clear them from the pending list for good.
                pipe.xack(self._stream, CONSUMER_GROUP, *gone)
            replies = await pipe.execute()
        return [
            Entry(eid, fields, pending[0]["times_delivered"])
            for (eid, fields), pending in zip(live, replies, strict=False)
            if pending
        ]


def _flatten(fields: Mapping[bytes, bytes]) -> list[bytes]:
    return [item for pair in fields.items() for item in pair]
