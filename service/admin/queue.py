"""Reading and repairing one queue in Redis: what `python -m service.admin` runs.

Every change goes through the queue's store and the same atomic scripts as the worker: a dead
letter is requeued or it is not, and a consumer is removed only while it owns nothing. Bulk
actions work through the dead letters present when they start, so they end even while workers
dead-letter more (a requeued task that fails again comes back as a new letter, behind them).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..rates import drain_forecast_s
from ..status import CancelResult, TaskStatus
from ..store import ConsumerInfo, QueueStore
from ..store.domains import DomainState
from ..store.limiter import LimiterState
from ..store.replies import Fields

__all__ = [
    "BulkResult",
    "ConsumerInfo",
    "DeadLetter",
    "Matching",
    "Progress",
    "QueueAdmin",
    "QueueStats",
    "RelayRow",
    "SendLimits",
    "WorkerBeat",
]

_SCAN_BATCH: Final = 100
# Counting changes nothing, so it reads larger batches (fewer round trips).
_COUNT_BATCH: Final = 1_000
# A worker is live while its last heartbeat is younger than this many of its intervals.
LIVE_WITHIN_BEATS: Final = 3


@dataclass(frozen=True, slots=True)
class SendLimits:
    """The shared send limits, as the workers last applied them, and what they mean for the
    backlog."""

    rate_limit_per_s: float | None  # SMTP_RATE_LIMIT
    burst: int | None
    effective_rate_per_s: float | None  # lowered after "slow down" replies
    quota: int | None  # SMTP_DAILY_QUOTA
    quota_used: int  # in the rolling window, now
    quota_window_s: float | None
    drain_forecast_s: float  # to send the stream's entries at the effective rate and quota

    @staticmethod
    def from_state(state: LimiterState, backlog: int) -> SendLimits:
        """The limits of `state`, with the forecast for `backlog` entries (one unit each)."""
        return SendLimits(
            rate_limit_per_s=state.per_second,
            burst=state.burst,
            effective_rate_per_s=state.effective_per_second,
            quota=state.quota,
            quota_used=state.quota_used,
            quota_window_s=state.quota_window_s,
            drain_forecast_s=round(
                drain_forecast_s(
                    backlog,
                    per_second=state.effective_per_second or math.inf,
                    quota=state.quota,
                    quota_used=state.quota_used,
                    window_s=state.quota_window_s or 86_400.0,
                ),
                1,
            ),
        )


@dataclass(frozen=True, slots=True)
class RelayLimit:
    """One relay's own limits (its `rate_limit` and `daily_quota`), as the workers last
    applied them: configured and effective rate, quota used in the rolling window now."""

    name: str
    rate_limit_per_s: float | None
    burst: int | None
    effective_rate_per_s: float | None  # lowered after that relay's "slow down" replies
    quota: int | None
    quota_used: int
    quota_window_s: float | None

    @staticmethod
    def from_state(name: str, state: LimiterState) -> RelayLimit:
        """The row of relay `name`'s limiter `state`."""
        return RelayLimit(
            name=name,
            rate_limit_per_s=state.per_second,
            burst=state.burst,
            effective_rate_per_s=state.effective_per_second,
            quota=state.quota,
            quota_used=state.quota_used,
            quota_window_s=state.quota_window_s,
        )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue at one moment."""

    queue: str
    stream: int  # entries waiting or being sent, in every lane
    pending: int  # of which handed to a consumer and not yet settled
    lag: int | None  # entries never handed out (None: Redis < 7 does not say)
    oldest_age_s: float | None  # age of the oldest entry in the stream
    delayed: int  # retries and scheduled sends not yet due
    next_due_in_s: float | None
    dead: int
    consumers: tuple[ConsumerInfo, ...]
    limits: SendLimits | None  # None: no worker has applied a rate limit or a quota
    # SMTP_DOMAIN_LIMITS as the workers last applied them, each with its next free slot
    domain_limits: tuple[DomainState, ...] = ()
    set_aside: int = 0  # entries put back until their domain's slot (their copies are delayed)
    relays: tuple[RelayRow, ...] = ()  # as the live workers' heartbeats report them
    relay_limits: tuple[RelayLimit, ...] = ()  # the relays with limits of their own
    lanes: dict[str, int] = field(default_factory=dict)  # `stream` by priority lane


@dataclass(frozen=True, slots=True)
class RelayRow:
    """One SMTP relay as the live workers see it: in how many it is up or down, and their sends
    over it by result (since each worker started)."""

    name: str
    up: int
    down: int
    sent: int
    failed: int
    unavailable: int

    @staticmethod
    def from_beats(beats: Sequence[WorkerBeat]) -> tuple[RelayRow, ...]:
        """The relays of the live workers' heartbeats, in the order they list them."""
        rows: dict[str, dict[str, int]] = {}
        for beat in beats:
            if not beat.live:
                continue
            for name, report in beat.relays.items():
                row = rows.setdefault(name, dict.fromkeys(("up", "down", *_RELAY_RESULTS), 0))
                if report.get("state") in ("up", "down"):
                    row[str(report["state"])] += 1
                for result in _RELAY_RESULTS:
                    row[result] += int(report.get(result, 0))
        return tuple(RelayRow(name, **counts) for name, counts in rows.items())


_RELAY_RESULTS: Final = ("sent", "failed", "unavailable")


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action did to the dead letters present when it started."""

    done: int  # letters requeued or purged
    present_at_start: int  # the snapshot; letters removed by someone else meanwhile are not done


# Called with (letters gone through so far, letters present at the start): first with 0, then
# after each batch.
Progress = Callable[[int, int], None]
# Which dead letters a bulk action takes (None: all of them).
Matching = Callable[["DeadLetter"], bool] | None


def _no_progress(seen: int, present: int) -> None:
    return None


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

    @property
    def task(self) -> dict[str, Any]:
        """The task as the producer gave it (empty when the entry held none that reads)."""
        task = _json(self.fields.get("task"))
        return task if isinstance(task, dict) else {}

    @property
    def tags(self) -> list[str]:
        """The task's tags."""
        return [str(tag) for tag in _as_list(self.task.get("tags"))]


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
    relays: dict[str, dict[str, Any]]  # each relay's state (up, down) and sends by result

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
            relays=dict(record.get("relays", {})),
        )


class QueueAdmin:
    """Inspect and repair the queue of `store`."""

    def __init__(self, store: QueueStore) -> None:
        self._store = store

    async def stats(self) -> QueueStats:
        """Sizes, consumers and ages of the queue."""
        overview = await self._store.overview()
        group = await self._store.group()
        consumers = await self._store.consumers()
        state = await self._store.limiter_state()
        domains = await self._store.domain_state()
        now_ms = time.time_ns() // 1_000_000
        sizes = overview.sizes
        oldest, next_due = overview.oldest_entry_ms, overview.next_due_ms
        return QueueStats(
            queue=self._store.queue,
            stream=sizes.stream,
            pending=group.pending if group else 0,
            lag=group.lag if group else sizes.stream,
            oldest_age_s=(now_ms - oldest) / 1000 if oldest is not None else None,
            delayed=sizes.delayed,
            next_due_in_s=(next_due - now_ms) / 1000 if next_due is not None else None,
            dead=sizes.dead,
            consumers=consumers,
            limits=SendLimits.from_state(state, sizes.stream)
            if state.per_second or state.quota
            else None,
            relays=RelayRow.from_beats(await self.workers()),
            relay_limits=tuple(
                RelayLimit.from_state(name, relay)
                for name, relay in (await self._store.relay_limiter_states()).items()
            ),
            domain_limits=domains,
            set_aside=sum(domain.set_aside for domain in domains),
            lanes={lane: count for lane, count in (sizes.lanes or {}).items()},
        )

    async def dead_letters(self, *, limit: int, after: str = "-") -> list[DeadLetter]:
        """Up to `limit` dead letters, oldest first, from id `after` (inclusive) on."""
        letters = await self._store.dead_letters(after=after, count=limit)
        return [_dead_letter(dead_id, fields) for dead_id, fields in letters]

    async def dead_letters_before(self, *, limit: int, before: str = "+") -> list[DeadLetter]:
        """Up to `limit` dead letters, newest first, from id `before` ("(id)": before it) back."""
        letters = await self._store.dead_letters_before(before=before, count=limit)
        return [_dead_letter(dead_id, fields) for dead_id, fields in letters]

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        """The dead letter with this id, if there is one."""
        fields = await self._store.dead_letter(dead_id)
        return _dead_letter(dead_id, fields) if fields is not None else None

    async def requeue(self, dead_ids: Sequence[str]) -> dict[str, str | None]:
        """Put dead letters back on the stream; map each id to its new entry id (None: absent)."""
        requeued: dict[str, str | None] = {}
        for dead_id in dead_ids:
            letter = await self.dead_letter(dead_id)
            task_id = letter.task_id if letter else "?"
            requeued[dead_id] = await self._store.requeue_dead(dead_id, task_id)
        return requeued

    async def requeue_all(
        self,
        progress: Progress = _no_progress,
        *,
        matching: Matching = None,
        until: str | None = None,
    ) -> BulkResult:
        """Put every dead letter present now back on the stream, each at most once.

        Letters added meanwhile are left alone: under a live worker they are the requeued
        copies failing again, and requeueing them too would never end. `matching` takes only
        the letters it accepts; `until` ends the snapshot at that id (a count confirmed before).
        """

        async def requeue(letters: list[DeadLetter]) -> int:
            done = 0
            for letter in letters:
                if await self._store.requeue_dead(letter.dead_id, letter.task_id):
                    done += 1
            return done

        return await self._through_snapshot(requeue, progress, matching, until)

    async def purge(self, dead_ids: Sequence[str]) -> int:
        """Delete these dead letters for good; return how many existed."""
        return await self._store.purge_dead(dead_ids)

    async def purge_all(
        self,
        progress: Progress = _no_progress,
        *,
        matching: Matching = None,
        until: str | None = None,
    ) -> BulkResult:
        """Delete every dead letter present now for good; letters added meanwhile stay.

        `matching` and `until` as for `requeue_all`.
        """

        async def purge(letters: list[DeadLetter]) -> int:
            return await self.purge([letter.dead_id for letter in letters])

        return await self._through_snapshot(purge, progress, matching, until)

    async def task_status(self, task_id: str) -> TaskStatus:
        """Where task `task_id` is now (see `service.status`)."""
        return await self._store.status(task_id)

    async def cancel(self, task_id: str) -> CancelResult:
        """Cancel task `task_id` unless a worker holds it or it has ended."""
        return await self._store.cancel(task_id)

    async def workers(self) -> list[WorkerBeat]:
        """Every worker with a heartbeat record, live ones first."""
        records = await self._store.heartbeats()
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
                await self._store.remove_heartbeats(beat.consumer)
        removed = []
        for consumer in await self._store.consumers():
            if consumer.pending or consumer.idle_ms < min_idle_ms:
                continue
            if await self._store.forget_consumer(consumer.name):
                removed.append(consumer.name)
        return removed

    async def count_matching(self, matching: Matching) -> tuple[int, str | None]:
        """How many dead letters present now `matching` accepts, and the newest id then: what
        a bulk action given the same filter and `until=` that id will go through."""
        _, newest = await self._store.dead_tail()
        count = 0
        async for batch in self._batches_until(newest, size=_COUNT_BATCH):
            count += sum(1 for letter in batch if matching is None or matching(letter))
        return count, newest

    async def _through_snapshot(
        self,
        act: Callable[[list[DeadLetter]], Awaitable[int]],
        progress: Progress,
        matching: Matching = None,
        until: str | None = None,
    ) -> BulkResult:
        """Run `act` on batches of the dead letters present now, each letter once.

        Stream ids only grow, so the newest id now bounds the snapshot: every letter added
        later has a higher id. With `matching`, "present" counts the letters it accepted.
        """
        present, newest = await self._store.dead_tail()
        if until is not None and (newest is None or _id_key(until) < _id_key(newest)):
            newest = until
        if matching is not None:
            present = 0
        progress(0, present)
        done = seen = 0
        async for batch in self._batches_until(newest):
            if matching is not None:
                batch = [letter for letter in batch if matching(letter)]  # noqa: PLW2901
                present += len(batch)
            done += await act(batch) if batch else 0
            seen += len(batch)
            progress(seen, present)
        return BulkResult(done=done, present_at_start=present)

    async def _batches_until(
        self, newest: str | None, size: int = _SCAN_BATCH
    ) -> AsyncIterator[list[DeadLetter]]:
        after = "-"
        while newest is not None:
            page = await self._store.dead_letters_until(after=after, last=newest, count=size)
            if not page:
                return
            yield [_dead_letter(dead_id, fields) for dead_id, fields in page]
            after = "(" + page[-1][0]


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a tuple that orders as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _dead_letter(dead_id: str, fields: Fields) -> DeadLetter:
    return DeadLetter(
        dead_id,
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
