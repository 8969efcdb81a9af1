"""Every Redis command one queue needs, as typed methods: the producer, the worker and the admin
CLI call these and build no script argument and parse no reply themselves."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..connection import AnyRedis, durability_of, login_of, node_holding
from ..errors import QueueFull, QueueVanished, RedisFull
from ..keys import CONSUMER_GROUP, LANES, Lane, QueueKeys
from ..rates import DomainLimit
from ..status import DEFAULT_STATUS_TTL, CancelResult, TaskState, TaskStatus, is_task_id
from . import access, domains, history, lanes, limiter, reads, replies, scripts
from .domains import DomainSlot, DomainState
from .history import MinuteCounts
from .limiter import Acquired, LimiterConfig, LimiterState, Throttled
from .replies import ConsumerInfo, Entry, Fields, GroupInfo, as_str
from .scripts import EnqueueReply, NewTask, ScriptCall, SettleReply, SettleWrite, status_ttl_ms
from .settles import SettleBatcher

__all__ = ["QueueOverview", "QueueSizes", "QueueStore"]


@dataclass(frozen=True, slots=True)
class QueueSizes:
    """Tasks in each place of a queue."""

    stream: int  # waiting or being sent, in every lane
    delayed: int  # retries and scheduled sends not yet due
    dead: int
    lanes: Mapping[Lane, int] | None = None  # `stream` by lane (None: not counted by lane)


@dataclass(frozen=True, slots=True)
class QueueOverview:
    """The sizes of a queue and the times at its edges, read in one round trip."""

    sizes: QueueSizes
    oldest_entry_ms: int | None  # when the oldest entry in the stream was added
    next_due_ms: int | None  # when the earliest delayed task is due


class QueueStore:
    """The Redis side of the queue `keys`.

    Every step that moves a task notes its status for `status_ttl` after the change (zero: no
    status records are written; see `service.status`).
    """

    def __init__(
        self, redis: AnyRedis, keys: QueueKeys, *, status_ttl: timedelta = DEFAULT_STATUS_TTL
    ) -> None:
        self._redis = redis
        self.keys = keys
        self.status_ttl_ms = status_ttl_ms(status_ttl)
        self._scripts = {
            source: redis.register_script(source)
            for source in (
                scripts.ENQUEUE,
                scripts.ADD_NOW,
                scripts.PROMOTE_DUE,
                scripts.REQUEUE_DEAD,
                scripts.FORGET_CONSUMER,
                scripts.TASK_STATUS,
                scripts.CANCEL,
                limiter.ACQUIRE,
                limiter.THROTTLE,
                domains.DOMAIN_PLAN,
                domains.DOMAIN_COMMIT,
                reads.SCHEDULED_PAGE,
                reads.SCHEDULED_ONE,
                history.ADD_MINUTES,
                lanes.READ_LANES,
            )
        }
        # The URL's ?wait_replicas=: each enqueue and settle then waits for the replicas.
        self._durability = durability_of(redis)
        self._settles = SettleBatcher(redis, self._durability, self.keys.stream)

    @property
    def queue(self) -> str:
        """The queue's name."""
        return self.keys.queue

    @property
    def waits_for_replicas(self) -> bool:
        """Whether writes wait for replicas (the URL's `?wait_replicas=`): every enqueue then
        goes through the ENQUEUE script, followed by WAIT on its connection."""
        return self._durability.replicas > 0

    # --- enqueueing -------------------------------------------------------------------------

    async def enqueue(
        self, tasks: Sequence[NewTask], *, max_backlog: int, window_ms: int
    ) -> EnqueueReply:
        """Add `tasks` in one atomic step, checking the backlog and idempotency keys.

        Raises `QueueFull` when the backlog would pass `max_backlog` (0: no limit) or Redis is
        at its memory limit (nothing was enqueued then), `QueueUnavailable` when Redis cannot
        be reached or does not answer in time.
        """
        call = scripts.enqueue(
            self.keys,
            tasks,
            max_backlog=max_backlog,
            window_ms=window_ms,
            status_ttl_ms=self.status_ttl_ms,
            now_ms=_now_ms(),
        )
        reply = scripts.enqueue_reply(await self._add_tasks(call, "ENQUEUE"))
        if reply.full:
            raise QueueFull(self.queue, backlog=reply.backlog, limit=max_backlog)
        return reply

    async def add_now(self, tasks: Sequence[NewTask]) -> None:
        """Add tasks due now without the backlog check (the producer knows it is far off).

        Without status records: one XADD, or XADDs in one MULTI/EXEC. With them: the ADD_NOW
        script, which notes each task's stream entry id in its record. All or nothing; raises
        as `enqueue` does.
        """
        if self.status_ttl_ms:
            call = scripts.add_now(
                self.keys, tasks, status_ttl_ms=self.status_ttl_ms, now_ms=_now_ms()
            )
            await self._add_tasks(call, "ADD_NOW")
            return
        try:
            if len(tasks) == 1:
                await self._redis.xadd(self.keys.lane(tasks[0].lane), scripts.xadd_fields(tasks[0]))
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                for task in tasks:
                    pipe.xadd(self.keys.lane(task.lane), scripts.xadd_fields(task))
                await pipe.execute()
        except RedisError as exc:  # OOM in a MULTI: EXEC then runs nothing, all or nothing holds
            raise replies.enqueue_error(self.queue, exc) from exc

    async def _add_tasks(self, call: ScriptCall, operation: str) -> Any:
        """Run an enqueueing script (waiting for the replicas if the URL asks it); Redis's
        refusals raised as the producer's errors."""
        try:
            if self.waits_for_replicas:
                return await self._run_replicated(call, operation)
            return await self._run(call, operation)
        except RedisFull:
            raise QueueFull(self.queue, backlog=None, limit=None) from None
        except RedisError as exc:
            raise replies.enqueue_error(self.queue, exc) from exc

    # --- consuming --------------------------------------------------------------------------

    async def ensure_group(self) -> bool:
        """Create the consumer group (and the stream) of every lane unless they exist; whether
        it created the normal lane's (the queue's first one).

        A new group starts at id 0 so entries enqueued before the first worker ever started
        are delivered too. The group is looked up first: at maxmemory Redis refuses XGROUP
        CREATE even for a group that exists, and a worker must be able to start then (its
        acknowledgements are what frees memory). Raises `RedisFull` when a group is missing
        and Redis cannot create it.
        """
        created = [await self._ensure_lane_group(lane) for lane in ("normal", "high", "low")]
        return created[0]

    async def _ensure_lane_group(self, lane: Lane) -> bool:
        if await self._lane_group(lane) is not None:
            return False
        stream = self.keys.lane(lane)
        try:
            await self._redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if replies.is_busy_group(exc):  # another worker created it meanwhile
                return False
            full = await self._full("XGROUP CREATE", exc)
            # A high or low lane that does not exist holds nothing to read (a queue from
            # before lanes, at maxmemory): its group is made once an entry arrives there.
            missing = lane != "normal" and not await self._redis.exists(stream)
            if isinstance(full, RedisFull) and missing:
                return False
            raise full from None
        return True

    async def read_lanes(
        self, consumer: str, order: Sequence[Lane], count: int, block_ms: int
    ) -> list[Entry]:
        """Up to `count` entries never delivered before, from the lanes in `order` (the first
        lane's first), waiting at most `block_ms` for one to arrive in any lane."""
        read = await self._read_lanes(consumer, order, count)
        if read.entries or block_ms <= 0:
            return read.entries
        streams: Any = read.tails
        await self._redis.xread(streams, count=1, block=block_ms)
        return (await self._read_lanes(consumer, order, count)).entries

    async def _read_lanes(self, consumer: str, order: Sequence[Lane], count: int) -> lanes.LaneRead:
        call = lanes.read_lanes(self.keys, order, consumer, count)
        try:
            reply = await self._run(call, "READ_LANES")
        except ResponseError as exc:
            raise self._vanished(exc) from None
        return lanes.read_lanes_reply(self.keys, order, reply)

    async def take_own_pending(self, consumer: str, count: int) -> list[Entry]:
        """Entries still pending under `consumer`'s name (left by an earlier run of it), up to
        `count` per lane, high lane first."""
        taken: list[Entry] = []
        for lane in LANES:
            taken += await self._take_own_pending(consumer, count, lane)
        return taken

    async def _take_own_pending(self, consumer: str, count: int, lane: Lane) -> list[Entry]:
        stream = self.keys.lane(lane)
        try:
            pending: Any = await self._redis.xpending_range(
                stream, CONSUMER_GROUP, "-", "+", count, consumername=consumer
            )
        except ResponseError as exc:
            if lane != "normal" and replies.is_missing_group(exc):
                return []  # a lane without its group yet: nothing of it is pending
            raise self._vanished(exc) from None
        ids = [as_str(item["message_id"]) for item in pending]
        if not ids:
            return []
        claimed: Any = await self._redis.xclaim(
            stream,
            CONSUMER_GROUP,
            consumer,
            min_idle_time=0,
            message_ids=cast("list[Any]", ids),
        )
        return await self._with_deliveries(ids, replies.claimed_entries(claimed), lane)

    async def claim_stale(
        self, consumer: str, min_idle_ms: int, cursor: str, count: int, lane: Lane = "normal"
    ) -> tuple[str, list[Entry]]:
        """Take over up to `count` entries of `lane` idle for `min_idle_ms` under any consumer.

        Returns the cursor to pass next time ("0-0" once the whole lane was scanned).
        """
        try:
            reply = await self._redis.xautoclaim(
                self.keys.lane(lane), CONSUMER_GROUP, consumer, min_idle_ms, cursor, count=count
            )
        except ResponseError as exc:
            if lane != "normal" and replies.is_missing_group(exc):
                return "0-0", []  # a lane without its group yet: nothing of it is pending
            raise self._vanished(exc) from None
        next_cursor, claimed = replies.autoclaimed(reply)
        ids = [entry_id for entry_id, _ in claimed]
        return next_cursor, await self._with_deliveries(ids, claimed, lane)

    async def _with_deliveries(
        self, ids: list[str], claimed: list[tuple[str, Fields]], lane: Lane = "normal"
    ) -> list[Entry]:
        """Pair claimed entries with their delivery counts; drop ids deleted while pending.

        An entry no longer pending when its count is read was settled after the claim: the
        delivery that held it (here or in another worker) finished between the two round trips,
        often after a Redis stall delayed its settle past the reclaim idle time. It is dropped,
        not sent again.
        """
        fields_by_id = dict(claimed)
        live = [(eid, fields) for eid in ids if (fields := fields_by_id.get(eid)) is not None]
        gone = [eid for eid in ids if eid not in fields_by_id]
        stream = self.keys.lane(lane)
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in live:
                pipe.xpending_range(stream, CONSUMER_GROUP, entry_id, entry_id, 1)
            if gone:
                # Nothing left to send: clear them from the pending list for good.
                pipe.xack(stream, CONSUMER_GROUP, *gone)
            counts = await pipe.execute()
        return [
            Entry(entry_id, fields, pending[0]["times_delivered"], lane)
            for (entry_id, fields), pending in zip(live, counts, strict=False)
            if pending
        ]

    async def keep_claimed(
        self, consumer: str, entry_ids: Sequence[str], lane: Lane = "normal"
    ) -> None:
        """Reset the idle time of entries of `lane` that `consumer` still works on, so that no
        other worker reclaims them meanwhile (the delivery count stays as it is)."""
        if entry_ids:
            ids: list[Any] = list(entry_ids)
            await self._redis.xclaim(
                self.keys.lane(lane), CONSUMER_GROUP, consumer, 0, ids, justid=True
            )

    def _vanished(self, exc: ResponseError) -> Exception:
        """NOGROUP: the stream or the group is gone (a Redis restarted empty, FLUSHDB, DEL)."""
        return QueueVanished(self.keys.stream) if replies.is_missing_group(exc) else exc

    async def settle(self, write: SettleWrite) -> SettleReply:
        """Record an entry's fate in one atomic step (`scripts.SETTLE`); see `SettleWrite`.

        Raises `RedisFull` when Redis is at maxmemory and the settle adds data (a retry copy, a
        dead letter): nothing was written, the entry stays pending. ValueError: a record too
        large for a script (see `scripts.settle`); nothing was sent.
        """
        call = scripts.settle(self.keys, write, status_ttl_ms=self.status_ttl_ms, now_ms=_now_ms())
        try:
            reply = await self._settles.run(call)
        except ResponseError as exc:
            raise await self._full("SETTLE", exc) from None
        return scripts.settle_reply(reply)

    async def was_sent(self, task_id: str) -> bool:
        """Whether a worker that lost a settle race recorded this task as sent."""
        return bool(await self._redis.exists(self.keys.sent(task_id)))

    async def promote_due(self, now_ms: int, limit: int) -> tuple[int, int | None]:
        """Move delayed tasks due by `now_ms` into the stream; return (moved, next due ms).

        Raises `RedisFull` at maxmemory: nothing moved.
        """
        call = scripts.promote_due(
            self.keys, now_ms=now_ms, limit=limit, status_ttl_ms=self.status_ttl_ms
        )
        return scripts.promote_reply(await self._run(call, "PROMOTE_DUE"))

    async def forget_consumer(self, consumer: str) -> bool:
        """Remove `consumer` from the group if it owns no pending entry; whether it was."""
        try:
            removed = await self._run(
                scripts.forget_consumer(self.keys, consumer), "XGROUP DELCONSUMER"
            )
        except ResponseError as exc:
            if replies.is_missing_group(exc):  # the group was never created
                return False
            raise
        return bool(removed)

    # --- sending limits (store/limiter.py) ---------------------------------------------------

    async def acquire_slots(
        self,
        config: LimiterConfig,
        costs: Sequence[int],
        *,
        horizon_s: float,
        longest_wait_s: float = 0.0,
        relay: str | None = None,
    ) -> Acquired:
        """Slots for a batch of entries costing `costs`, in order, from the shared limiter
        (or `relay`'s own; none further than `longest_wait_s` if set) (it goes through at
        maxmemory: see `limiter.ACQUIRE`)."""
        call = limiter.acquire(
            self.keys,
            config,
            costs,
            horizon_s=horizon_s,
            longest_wait_s=longest_wait_s,
            relay=relay,
        )
        return limiter.acquire_reply(await self._run(call, "ACQUIRE"), config)

    async def throttle(self, per_second: float, *, relay: str | None = None) -> Throttled:
        """Lower the shared effective rate (or `relay`'s) after a "slow down" reply (once per
        calm period)."""
        call = limiter.throttle(self.keys, per_second, relay=relay)
        return limiter.throttle_reply(await self._run(call, "THROTTLE"))

    async def announce_relay_limits(self, relays: Sequence[str]) -> None:
        """Name the relays that have limits of their own, for `admin stats`."""
        if relays:
            await self._redis.hset(self.keys.relays, mapping=dict.fromkeys(relays, "1"))

    async def relay_limiter_states(self) -> dict[str, LimiterState]:
        """Each announced relay's own limits, effective rate and quota used, read now."""
        names = sorted(replies.as_str(name) for name in await self._redis.hkeys(self.keys.relays))
        states: dict[str, LimiterState] = {}
        seconds, micros = await self._redis.time(**await self._on_queue_node())
        for name in names:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.execute_command("HGETALL", self.keys.relay_limiter(name))  # see limiter_state
                pipe.lrange(self.keys.relay_quota(name), 0, -1)
                fields, buckets = await pipe.execute()
            states[name] = limiter.limiter_state(fields, buckets, seconds * 1_000_000 + micros)
        return states

    async def plan_domain_slots(
        self,
        limits: Sequence[DomainLimit],
        entries: Sequence[tuple[str, Sequence[str]]],
        *,
        horizon_s: float,
    ) -> list[DomainSlot]:
        """Places in the lines of the limited domains for `entries` (task id, its limited
        domains), in order: which go, which are set aside (see `domains.DOMAIN_PLAN`)."""
        call = domains.plan_domains(self.keys, limits, entries, horizon_s=horizon_s)
        return domains.domain_slots_reply(await self._run(call, "DOMAIN_PLAN"))

    async def commit_domain_slots(
        self,
        limits: Sequence[DomainLimit],
        entries: Sequence[tuple[str, float, Sequence[str]]],
        *,
        horizon_s: float,
    ) -> list[DomainSlot]:
        """Send slots for the planned `entries` that go (task id, seconds until its shared
        slot, its limited domains), in order (see `domains.DOMAIN_COMMIT`)."""
        call = domains.commit_domains(self.keys, limits, entries, horizon_s=horizon_s)
        return domains.domain_slots_reply(await self._run(call, "DOMAIN_COMMIT"))

    async def domain_state(self) -> tuple[DomainState, ...]:
        """The limited domains, each with its next free slot and the entries set aside for
        it, read now."""
        # TIME names no key: a cluster runs it apart, on the node of the limiter's slot.
        seconds, micros = await self._redis.time(**await self._on_queue_node())
        fields = await self._redis.hgetall(self.keys.domain_limiter)
        names = domains.configured_domains(fields)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(self.keys.domain_kept(name))
            set_aside = await pipe.execute()
        now_us = seconds * 1_000_000 + micros
        return domains.domain_state(fields, [int(n) for n in set_aside], now_us)

    async def limiter_state(self) -> LimiterState:
        """The limits the workers apply, the effective rate and the quota used, read now."""
        # TIME names no key: a cluster runs it apart, on the node of the limiter's slot.
        seconds, micros = await self._redis.time(**await self._on_queue_node())
        async with self._redis.pipeline(transaction=True) as pipe:
            # Not hgetall(): in a cluster's MULTI, redis-py hands its reply parser a `keys`
            # argument the parser does not take (redis-py 8.1).
            pipe.execute_command("HGETALL", self.keys.limiter)
            pipe.lrange(self.keys.quota, 0, -1)
            fields, buckets = await pipe.execute()
        return limiter.limiter_state(fields, buckets, seconds * 1_000_000 + micros)

    # --- looking ----------------------------------------------------------------------------

    async def sizes(self) -> QueueSizes:
        """How many tasks wait in the lanes, the delayed set and the dead letters."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for lane in LANES:
                pipe.xlen(self.keys.lane(lane))
            pipe.zcard(self.keys.delayed)
            pipe.xlen(self.keys.dead)
            *lengths, delayed, dead = await pipe.execute()
        by_lane = dict(zip(LANES, lengths, strict=True))
        return QueueSizes(stream=sum(lengths), delayed=delayed, dead=dead, lanes=by_lane)

    async def overview(self) -> QueueOverview:
        """Sizes, the oldest entry's time (over every lane) and the next due time, in one
        round trip."""
        keys = self.keys
        async with self._redis.pipeline(transaction=False) as pipe:
            for lane in LANES:
                pipe.xlen(keys.lane(lane))
                pipe.xrange(keys.lane(lane), count=1)
            pipe.zcard(keys.delayed)
            pipe.zrange(keys.delayed, 0, 0, withscores=True)
            pipe.xlen(keys.dead)
            *per_lane, delayed, next_due, dead = await pipe.execute()
        lengths = per_lane[0::2]
        oldest = [replies.entry_ms(first[0][0]) for first in per_lane[1::2] if first]
        by_lane = dict(zip(LANES, lengths, strict=True))
        return QueueOverview(
            QueueSizes(stream=sum(lengths), delayed=delayed, dead=dead, lanes=by_lane),
            oldest_entry_ms=min(oldest, default=None),
            next_due_ms=int(next_due[0][1]) if next_due else None,
        )

    async def group(self) -> GroupInfo | None:
        """The consumer group's counts over every lane; None before the group (or the
        stream) of the normal lane exists."""
        infos = [await self._lane_group(lane) for lane in ("normal", "high", "low")]
        if infos[0] is None:
            return None
        found = [info for info in infos if info is not None]
        lags = [info.lag for info in found]
        return GroupInfo(
            pending=sum(info.pending for info in found),
            lag=None if None in lags else sum(lag for lag in lags if lag is not None),
        )

    async def _lane_group(self, lane: Lane) -> GroupInfo | None:
        try:
            groups: Any = await self._redis.xinfo_groups(self.keys.lane(lane))
        except ResponseError as exc:
            if replies.is_missing_stream(exc):
                return None
            raise
        return replies.group_info(groups, CONSUMER_GROUP)

    async def consumers(self) -> tuple[ConsumerInfo, ...]:
        """The consumers of the group; none before the group (or the stream) exists."""
        try:
            reply: Any = await self._redis.xinfo_consumers(self.keys.stream, CONSUMER_GROUP)
        except ResponseError as exc:
            if replies.is_missing_stream(exc) or replies.is_missing_group(exc):
                return ()
            raise
        return replies.consumers(reply)

    # --- dead letters -----------------------------------------------------------------------

    async def dead_letters(self, *, after: str, count: int) -> list[tuple[str, Fields]]:
        """Up to `count` dead letters, oldest first, from id `after` on ("(id)": after it)."""
        reply: Any = await self._redis.xrange(self.keys.dead, min=after, count=count)
        return [(as_str(entry_id), fields) for entry_id, fields in reply]

    async def dead_letters_before(self, *, before: str, count: int) -> list[tuple[str, Fields]]:
        """Up to `count` dead letters, newest first, from id `before` back ("(id)": before it;
        "+": the newest)."""
        reply: Any = await self._redis.xrevrange(self.keys.dead, max=before, count=count)
        return [(as_str(entry_id), fields) for entry_id, fields in reply]

    async def dead_letter(self, dead_id: str) -> Fields | None:
        """The fields of the dead letter `dead_id`, if there is one."""
        reply: Any = await self._redis.xrange(self.keys.dead, min=dead_id, max=dead_id)
        return reply[0][1] if reply else None

    async def requeue_dead(self, dead_id: str, task_id: str) -> str | None:
        """Put a dead letter back on the stream; its new entry id, or None if it is gone."""
        call = scripts.requeue_dead(
            self.keys,
            dead_id=dead_id,
            task_id=task_id,
            status_ttl_ms=self.status_ttl_ms,
            now_ms=_now_ms(),
        )
        new_id = await self._run(call, "REQUEUE_DEAD")
        return as_str(new_id) if new_id else None

    async def purge_dead(self, dead_ids: Sequence[str]) -> int:
        """Delete these dead letters for good; return how many existed."""
        return int(await self._redis.xdel(self.keys.dead, *dead_ids)) if dead_ids else 0

    # --- scheduled sends (store/reads.py) -----------------------------------------------------

    async def scheduled(self, *, from_ms: int, skip: int, count: int) -> list[reads.Scheduled]:
        """Up to `count` delayed tasks in due order, from due time `from_ms` on, after skipping
        the first `skip` of those (the ones already shown that were due at `from_ms`)."""
        call = reads.scheduled_page(self.keys, from_ms=from_ms, skip=skip, count=count)
        return reads.scheduled_reply(await self._run(call, "SCHEDULED_PAGE"))

    async def scheduled_one(self, task_id: str) -> reads.Scheduled | None:
        """The delayed task `task_id`, if it is in the delayed set."""
        call = reads.scheduled_one(self.keys, task_id)
        found = reads.scheduled_reply(await self._run(call, "SCHEDULED_ONE"))
        return found[0] if found else None

    # --- status and cancel -------------------------------------------------------------------

    async def status(self, task_id: str) -> TaskStatus:
        """Where task `task_id` is now (one round trip; UNKNOWN for an id never seen, one whose
        record expired, or one that is not a task id)."""
        if not is_task_id(task_id):
            return TaskStatus(task_id, TaskState.UNKNOWN)
        reply = await self._run(scripts.task_status(self.keys, task_id), "TASK_STATUS")
        return replies.task_status(task_id, reply)

    async def cancel(self, task_id: str) -> CancelResult:
        """Cancel task `task_id` unless a worker holds it or it has ended; see `CancelResult`."""
        if not is_task_id(task_id):
            return CancelResult(task_id, cancelled=False, was=TaskState.UNKNOWN)
        call = scripts.cancel(
            self.keys, task_id, status_ttl_ms=self.status_ttl_ms, now_ms=_now_ms()
        )
        return replies.cancel_result(task_id, await self._run(call, "CANCEL"))

    # --- heartbeats -------------------------------------------------------------------------

    async def write_heartbeat(self, consumer: str, record: bytes) -> None:
        """Store `consumer`'s latest heartbeat record; `RedisFull` at maxmemory."""
        try:
            await self._redis.hset(self.keys.workers, consumer, record)
        except ResponseError as exc:
            raise await self._full("HSET", exc) from None

    async def remove_heartbeats(self, *consumers: str) -> None:
        """Delete these consumers' heartbeat records."""
        await self._redis.hdel(self.keys.workers, *consumers)

    async def heartbeats(self) -> dict[str, bytes]:
        """Every heartbeat record, by consumer name."""
        records: Any = await self._redis.hgetall(self.keys.workers)
        return {as_str(name): record for name, record in records.items()}

    # --- history (store/history.py) ----------------------------------------------------------

    async def add_minutes(
        self, consumer: str, counts: Mapping[int, MinuteCounts], peaks: Mapping[int, int]
    ) -> None:
        """Add a worker's counts to each minute's hash, and set its latency peak there, in one
        atomic step (`history.ADD_MINUTES`); each hash expires `history.KEEP_MINUTES_S` after
        its minute. `RedisFull` at maxmemory, when nothing was written."""
        if counts or peaks:
            await self._run(history.add_minutes(self.keys, consumer, counts, peaks), "ADD_MINUTES")

    async def minutes(self, first: int, count: int) -> list[MinuteCounts]:
        """The counts of `count` minutes from minute `first` on (minutes since the epoch), in
        one pipelined round trip; a minute nobody wrote counts as nothing done."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for minute in range(first, first + count):
                pipe.hgetall(self.keys.minute(minute))
            return [history.minute_counts(reply) for reply in await pipe.execute()]

    # --- the server ---------------------------------------------------------------------------

    async def access(self, *, limits: bool = False, domains: bool = False) -> access.Access:
        """Whether the Redis user this client logs in as may run every command a worker runs
        (`limits`: the shared limiter's too; `domains`: the per-domain limiter's; the status
        ledger's when it keeps records)."""
        user = login_of(self._redis)[0] or "default"
        return await access.check_access(
            self._redis,
            user,
            self.keys,
            limits=limits,
            domains=domains,
            status=self.status_ttl_ms > 0,
            durable=self.waits_for_replicas,
        )

    async def _on_queue_node(self) -> dict[str, Any]:
        """For a command naming no key: the queue's server, on a cluster."""
        return await node_holding(self._redis, self.keys.stream)

    async def memory(self) -> tuple[int | None, int | None, str | None]:
        """Redis's (used_memory, maxmemory, maxmemory_policy); None for what it will not say."""
        try:
            info: Any = await self._redis.info("memory", **await self._on_queue_node())
        except ResponseError:  # INFO refused (an ACL, a managed service): no figures
            return None, None, None
        return replies.memory_figures(info)

    async def uptime_seconds(self) -> int | None:
        """How long the Redis server has been running; None if it will not say."""
        try:
            info: Any = await self._redis.info("server", **await self._on_queue_node())
        except ResponseError:
            return None
        uptime = info.get("uptime_in_seconds")
        return uptime if isinstance(uptime, int) else None

    async def _run(self, call: ScriptCall, operation: str) -> Any:
        try:
            return await self._scripts[call.source](keys=call.keys, args=call.args)
        except ResponseError as exc:
            raise await self._full(operation, exc) from None

    async def _run_replicated(self, call: ScriptCall, operation: str) -> Any:
        """Run `call`, then WAIT for the replicas on the same connection, in one round trip
        (WAIT counts the writes of its own connection); `QueueUnavailable` if too few
        confirmed in time."""
        wanted, timeout_ms = self._durability.replicas, self._durability.timeout_ms
        sha = self._scripts[call.source].sha
        node = await self._on_queue_node()
        for _ in range(2):  # a Redis that lost its scripts (a restart, a new primary) loads it
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
                pipe.execute_command("WAIT", wanted, timeout_ms, **node)
                reply, acked = await pipe.execute(raise_on_error=False)
            if not isinstance(reply, NoScriptError):
                break
            await self._redis.script_load(call.source)
        if isinstance(reply, ResponseError):
            raise await self._full(operation, reply)
        for result in (reply, acked):
            if isinstance(result, Exception):
                raise result
        if int(acked) < wanted:
            raise replies.not_replicated(self.queue, int(acked), wanted, timeout_ms)
        return reply

    async def _full(self, operation: str, exc: ResponseError) -> Exception:
        """`RedisFull` with Redis's memory figures if `exc` is an OOM refusal, else `exc`."""
        if not replies.is_out_of_memory(exc):
            return exc
        used, limit, policy = await self.memory()
        return RedisFull(operation, used_memory=used, maxmemory=limit, policy=policy)

    # --- dead letters in bulk (admin) -------------------------------------------------------

    async def dead_tail(self) -> tuple[int, str | None]:
        """How many dead letters there are and the newest one's id (None: none), read at one
        instant: the snapshot a bulk action works through while workers add more behind it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xlen(self.keys.dead)
            pipe.xrevrange(self.keys.dead, count=1)
            count, newest = await pipe.execute()
        return int(count), as_str(newest[0][0]) if newest else None

    async def dead_letters_until(
        self, *, after: str, last: str, count: int
    ) -> list[tuple[str, Fields]]:
        """Up to `count` dead letters, oldest first, from id `after` on ("(id)": after it) up to
        id `last` included."""
        reply: Any = await self._redis.xrange(self.keys.dead, min=after, max=last, count=count)
        return [(as_str(entry_id), fields) for entry_id, fields in reply]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
