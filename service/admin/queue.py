"""Reading and repairing one queue in Redis: what `python -m service.admin` runs.

Every change goes through the same atomic scripts as the worker (`service.scripts`): a dead
letter is requeued or it is not, and a consumer is removed only while it owns nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..connection import text
from ..keys import CONSUMER_GROUP, QueueKeys
from ..scripts import FORGET_CONSUMER, REQUEUE_DEAD

__all__ = ["ConsumerInfo", "DeadLetter", "QueueAdmin", "QueueStats", "WorkerBeat"]

_SCAN_BATCH: Final = 100
# A worker is live while its last heartbeat is younger than this many of its intervals.
LIVE_WITHIN_BEATS: Final = 3


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of the group: a worker process, alive or gone."""

    name: str
    pending: int  # entries it holds, delivered and not yet settled
    idle_ms: int  # since it last read or claimed


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue at one moment."""

    queue: str
    stream: int  # entries waiting or being sent
    pending: int  # of which handed to a consumer and not yet settled
    lag: int | None  # entries never handed out (None: Redis < 7 does not say)
    oldest_age_s: float | None  # age of the oldest entry in the stream
    delayed: int  # retries and scheduled sends not yet due
    next_due_in_s: float | None
    dead: int
    consumers: tuple[ConsumerInfo, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record: the task's entry as it was, and why it was given up."""

    dead_id: str
    fields: dict[str, str]

    @property
    def task_id(self) -> str:
        """The task's id, or "?" for an entry that was not a task at all."""
        return self.fields.get("id", "?")

    @property
    def reason(self) -> str:
        """Why the task was given up."""
        return self.fields.get("dead_reason", "")

    @property
    def dead_at_ms(self) -> int | None:
        """When it was dead-lettered, in milliseconds since the epoch."""
        value = self.fields.get("dead_at", "")
        return int(value) if value.isdigit() else None

    @property
    def recipients(self) -> list[str]:
        """Who it was for: the recipients given up on, else the task's."""
        narrowed = _json(self.fields.get("rcpt"))
        if isinstance(narrowed, list):
            return [str(address) for address in narrowed]
        task = _json(self.fields.get("task"))
        if isinstance(task, dict):
            return [str(a) for field in ("to", "cc", "bcc") for a in _as_list(task.get(field))]
        return []


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """A worker's latest heartbeat, and whether it is recent enough to call the worker live."""

    consumer: str
    live: bool
    state: str  # starting, sending, paused, draining
    age_s: float  # since the last heartbeat
    state_for_s: float
    host: str
    pid: int
    outcomes: dict[str, int]

    @staticmethod
    def from_record(record: dict[str, Any], now: float) -> WorkerBeat:
        """Read one heartbeat record as the worker wrote it."""
        age = now - float(record["beat_at"])
        return WorkerBeat(
            consumer=str(record["consumer"]),
            live=age <= LIVE_WITHIN_BEATS * float(record["interval_s"]),
            state=str(record["state"]),
            age_s=round(age, 1),
            state_for_s=round(now - float(record["state_since"]), 1),
            host=str(record["host"]),
            pid=int(record["pid"]),
            outcomes={str(k): int(v) for k, v in record.get("outcomes", {}).items()},
        )


class QueueAdmin:
    """Inspect and repair the queue `keys` on `redis`."""

    def __init__(self, redis: Redis, keys: QueueKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._requeue = redis.register_script(REQUEUE_DEAD)
        self._forget = redis.register_script(FORGET_CONSUMER)

    async def stats(self) -> QueueStats:
        """Sizes, consumers and ages of the queue."""
        keys = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.stream)
            pipe.xrange(keys.stream, count=1)
            pipe.zcard(keys.delayed)
            pipe.zrange(keys.delayed, 0, 0, withscores=True)
            pipe.xlen(keys.dead)
            stream, oldest, delayed, next_due, dead = await pipe.execute()
        group, consumers = await self._group()
        now_ms = time.time_ns() // 1_000_000
        return QueueStats(
            queue=keys.queue,
            stream=stream,
            pending=int(group.get("pending", 0)),
            lag=group.get("lag") if group else stream,
            oldest_age_s=(now_ms - _id_ms(oldest[0][0])) / 1000 if oldest else None,
            delayed=delayed,
            next_due_in_s=(next_due[0][1] - now_ms) / 1000 if next_due else None,
            dead=dead,
            consumers=consumers,
        )

    async def dead_letters(self, *, limit: int, after: str = "-") -> list[DeadLetter]:
        """Up to `limit` dead letters, oldest first, from id `after` (inclusive) on."""
        reply: Any = await self._redis.xrange(self._keys.dead, min=after, count=limit)
        return [_dead_letter(entry_id, fields) for entry_id, fields in reply]

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        """The dead letter with this id, if there is one."""
        reply: Any = await self._redis.xrange(self._keys.dead, min=dead_id, max=dead_id)
        return _dead_letter(*reply[0]) if reply else None

    async def requeue(self, dead_ids: Sequence[str]) -> dict[str, str | None]:
        """Put dead letters back on the stream; map each id to its new entry id (None: absent)."""
        requeued: dict[str, str | None] = {}
        for dead_id in dead_ids:
            letter = await self.dead_letter(dead_id)
            task_id = letter.task_id if letter else "?"
            new_id: Any = await self._requeue(
                keys=[self._keys.dead, self._keys.stream, self._keys.sent(task_id)],
                args=[dead_id],
            )
            requeued[dead_id] = text(new_id) if new_id else None
        return requeued

    async def requeue_all(self) -> int:
        """Put every dead letter back on the stream; return how many."""
        count = 0
        async for batch in self._dead_id_batches():
            count += sum(1 for new_id in (await self.requeue(batch)).values() if new_id)
        return count

    async def purge(self, dead_ids: Sequence[str]) -> int:
        """Delete these dead letters for good; return how many existed."""
        return int(await self._redis.xdel(self._keys.dead, *dead_ids)) if dead_ids else 0

    async def purge_all(self) -> int:
        """Delete every dead letter for good; return how many."""
        count = 0
        async for batch in self._dead_id_batches():
            count += await self.purge(batch)
        return count

    async def workers(self) -> list[WorkerBeat]:
        """Every worker with a heartbeat record, live ones first."""
        records: Any = await self._redis.hgetall(self._keys.workers)
        now = time.time()
        beats = []
        for raw in records.values():
            try:
                beats.append(WorkerBeat.from_record(orjson.loads(raw), now))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # not written by a worker: not a worker
        return sorted(beats, key=lambda beat: (not beat.live, beat.consumer))

    async def prune_consumers(self, *, min_idle_ms: int) -> list[str]:
        """Remove consumers idle for `min_idle_ms` that own nothing; return their names.

        Heartbeat records of workers dead for as long go too.
        """
        for beat in await self.workers():
            if not beat.live and beat.age_s * 1000 >= min_idle_ms:
                await self._redis.hdel(self._keys.workers, beat.consumer)
        _, consumers = await self._group()
        removed = []
        for consumer in consumers:
            if consumer.pending or consumer.idle_ms < min_idle_ms:
                continue
            gone: Any = await self._forget(
                keys=[self._keys.stream], args=[CONSUMER_GROUP, consumer.name]
            )
            if gone:
                removed.append(consumer.name)
        return removed

    async def _group(self) -> tuple[dict[str, Any], tuple[ConsumerInfo, ...]]:
        """The workers group's XINFO, and its consumers (empty when there is no group yet)."""
        try:
            groups: Any = await self._redis.xinfo_groups(self._keys.stream)
            consumers: Any = await self._redis.xinfo_consumers(self._keys.stream, CONSUMER_GROUP)
        except ResponseError as exc:  # no stream or no group: nothing was ever enqueued
            if "no such key" in str(exc) or "NOGROUP" in str(exc):
                return {}, ()
            raise
        group: dict[str, Any] = next((g for g in groups if text(g["name"]) == CONSUMER_GROUP), {})
        return group, tuple(
            ConsumerInfo(text(c["name"]), int(c["pending"]), int(c["idle"])) for c in consumers
        )

    async def _dead_id_batches(self) -> AsyncIterator[list[str]]:
        after = "-"
        while True:
            reply: Any = await self._redis.xrange(self._keys.dead, min=after, count=_SCAN_BATCH)
            if not reply:
                return
            ids = [text(entry_id) for entry_id, _ in reply]
            yield ids
            after = "(" + ids[-1]


def _dead_letter(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        text(entry_id),
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()},
    )


def _json(text: str | None) -> object:
    try:
        return orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return None


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _id_ms(entry_id: bytes | str) -> int:
    return int(text(entry_id).partition("-")[0])
