"""The worker's lifecycle: read, reclaim, deliver with bounded concurrency, drain on shutdown.

Two loops feed delivery tasks on one event loop:

- the reader takes new entries whenever a send slot is free, from the priority lanes in the
  order `lanes.lane_order` gives (high first, a share for normal and low);
- the reclaimer takes over entries that a consumer (usually a dead one) left pending longer
  than `WORKER_RECLAIM_IDLE_SECONDS`, in every lane, high first.

Both wait while sending is paused (the SMTP breaker), take no more than the shared limiter lets
start soon, and hand each entry its slot (`pacing.py`). Beside them run the breaker's probe, the
promotion of due retries and scheduled sends into the stream, and a periodic report of the
queue's sizes.

The signal handlers only call `Shutdown.request`; `run` turns it into a shutdown: stop intake,
give in-flight sends until the shutdown deadline (less what the closing steps keep), cancel the
rest (their entries stay pending and another worker takes them over), let the last fate writes
finish within the deadline, and return the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Collection
from typing import Any, Final

import structlog

from ..connection import READ_BLOCK_MS
from ..errors import QueueVanished, RedisFull
from ..keys import CONSUMER_GROUP, LANES
from ..settings import WorkerSettings
from ..store import Entry, QueueStore
from .backoff import TRANSIENT_REDIS_ERRORS, retry_while_unavailable
from .breaker import SmtpBreaker
from .delivery import Delivery
from .lanes import lane_order
from .pacing import Admission, Pacer
from .shutdown import Shutdown, cancel_and_wait
from .upkeep import promote_forever, report_forever

__all__ = ["Worker"]

log = structlog.get_logger("service.worker")
# The longest a read waits for more send slots to free once one is (see _wait_for_slots_to_read).
_GATHER_SLOTS_SECONDS: Final = 0.002
# The pause before the next read when the last one emptied the stream. Tasks arriving one at a
# time would each cost a read, a settle and a wake-up of their own, several times the client CPU
# of an email read in a batch. A short pause lets arrivals share them, for at most this much
# added latency; the next read still blocks when nothing came meanwhile.
_GATHER_ARRIVALS_SECONDS: Final = 0.002


class Worker:
    """Delivers the entries of one queue until asked to stop."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: QueueStore,
        *,
        consumer: str,
        delivery: Delivery,
        breaker: SmtpBreaker,
        shutdown: Shutdown,
        pacer: Pacer,
        send_capacity: Callable[[], int],
    ) -> None:
        self._settings = settings
        # How many sends the SMTP pool can carry now: WORKER_CONCURRENCY, or fewer while the
        # server takes no more connections (see connections.py).
        self._send_capacity = send_capacity
        self._pacer = pacer
        self._store = store
        self.consumer = consumer
        self._delivery = delivery
        self._breaker = breaker
        self._shutdown = shutdown
        self._slot_freed = asyncio.Event()
        # Every delivery until it ends (its fate recorded), by entry id.
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # The deliveries holding a send slot: those whose fate is not yet being recorded.
        self._sending: set[str] = set()
        self._started = False
        # The intake's loops (reader, reclaimer, breaker probe, promotion, report), once started.
        self._loops: list[asyncio.Task[None]] = []
        # The reader and the reclaimer take turns between counting free slots and dispatching,
        # so together they never start more than WORKER_CONCURRENCY sends (an entry waiting for
        # an SMTP connection would age towards being reclaimed and sent twice).
        self._intake_turn = asyncio.Lock()
        self._reads = 0  # reads so far: picks each read's lane order

    @property
    def state(self) -> str:
        """What the worker is doing: starting, sending, paused (SMTP unusable) or draining."""
        if self._shutdown.requested.is_set():
            return "draining"
        if not self._started:
            return "starting"
        return "paused" if self._breaker.is_paused else "sending"

    @property
    def in_flight(self) -> int:
        """Sends under way (each holds one SMTP connection)."""
        return len(self._sending)

    async def run(self) -> int:
        """Work until a stop is requested; return the exit code (0 drained, 1 failed or forced).

        A failing intake stops the worker too, within the same deadline.
        """
        intake = asyncio.create_task(self._intake(), name="intake")
        stop = asyncio.create_task(self._shutdown.requested.wait())
        done, _ = await asyncio.wait([intake, stop], return_when=asyncio.FIRST_COMPLETED)
        self._shutdown.begin()
        await cancel_and_wait([intake, stop, *self._loops], "worker stopping")
        failed = intake in done and intake.exception() is not None
        if failed:
            log.error("worker_failed", exc_info=intake.exception())
        code = await self._drain()
        return 1 if failed else code

    async def _intake(self) -> None:
        await retry_while_unavailable("create_group", self._store.ensure_group)
        log.info(
            "worker_started",
            consumer=self.consumer,
            queue=self._settings.email_queue,
            concurrency=self._settings.worker_concurrency,
        )
        self._started = True
        await self._resume_own_pending()
        if self._shutdown.requested.is_set():
            return  # a cancellation lost on the way here (see shutdown.py): start nothing
        # Plain tasks, not a TaskGroup: a TaskGroup cancels its tasks once, and a loop that lost
        # that cancellation would keep the worker from stopping. `run` cancels each of these
        # until it has ended.
        self._loops = [
            asyncio.create_task(coroutine, name=name)
            for name, coroutine in (
                ("breaker", self._breaker.run()),
                ("promote", promote_forever(self._store)),
                ("report", report_forever(self._store)),
                ("read", self._read_loop()),
                ("reclaim", self._reclaim_loop()),
            )
        ]
        # Each loop runs until cancelled: one that ends has failed, and so has the intake.
        done, _ = await asyncio.wait(self._loops, return_when=asyncio.FIRST_COMPLETED)
        for loop in done:
            loop.result()
        raise RuntimeError(f"intake loop {next(iter(done)).get_name()!r} ended")

    async def _resume_own_pending(self) -> None:
        """Entries left pending under this consumer's name by an earlier run go first."""
        count = self._settings.worker_concurrency * 10
        try:
            entries = await retry_while_unavailable(
                "resume_pending", lambda: self._store.take_own_pending(self.consumer, count)
            )
        except QueueVanished:
            await self._queue_vanished()
            return
        if entries:
            log.info("resuming_pending", entries=len(entries))
        for entry in entries:
            await self._wait_for_slot()
            await self._admit([entry])

    async def _read_loop(self) -> None:
        while True:
            async with self._intake_turn:
                await self._breaker.wait_until_sending()
                free = await self._wait_for_slots_to_read()
                free = await self._pacer.wait_to_read(free)
                order = lane_order(self._reads)
                self._reads += 1
                read = functools.partial(
                    self._store.read_lanes, self.consumer, order, free, READ_BLOCK_MS
                )
                try:
                    entries = await retry_while_unavailable("read", read)
                except QueueVanished:
                    await self._queue_vanished()
                    entries = []
                await self._admit(entries)
            # The stream is empty (the read got fewer entries than it asked for) but tasks are
            # arriving: let a few gather rather than read each alone (_GATHER_ARRIVALS_SECONDS).
            caught_up = 0 < len(entries) < free
            await asyncio.sleep(_GATHER_ARRIVALS_SECONDS if caught_up else 0)

    async def _reclaim_loop(self) -> None:
        idle_seconds = self._settings.worker_reclaim_idle_seconds
        min_idle_ms = int(idle_seconds * 1000)
        # Scan a few times per idle period, so a dead worker's entries wait at most ~1.25x it.
        interval = min(max(idle_seconds / 4, 0.1), 30.0)
        position, cursor = 0, "0-0"  # the lane scanned, and where in it
        while True:
            lane = LANES[position]
            async with self._intake_turn:
                await self._breaker.wait_until_sending()
                free = await self._pacer.wait_to_read(await self._wait_for_slot())
                claim = functools.partial(
                    self._store.claim_stale, self.consumer, min_idle_ms, cursor, free, lane
                )
                try:
                    cursor, entries = await retry_while_unavailable("reclaim", claim)
                except QueueVanished:
                    await self._queue_vanished()
                    cursor, entries = "0-0", []
                taken = []
                for entry in entries:
                    if entry.entry_id in self._in_flight:
                        continue  # our own slow send; it records its fate itself
                    log.info("entry_reclaimed", entry_id=entry.entry_id, attempt=entry.deliveries)
                    taken.append(entry)
                await self._admit(taken)
            if cursor == "0-0":  # this lane was scanned to its end: the next, or a pause
                position = (position + 1) % len(LANES)
                if position == 0:
                    await asyncio.sleep(interval)

    async def _queue_vanished(self) -> None:
        """The stream or the group disappeared under the worker: create the group again, and
        say so once (whichever of the reader and the reclaimer creates it says it)."""
        if not await retry_while_unavailable("create_group", self._store.ensure_group):
            return
        uptime = await retry_while_unavailable("uptime", self._store.uptime_seconds)
        log.warning(
            "queue_vanished",
            stream=self._store.keys.stream,
            group=CONSUMER_GROUP,
            redis_uptime_s=uptime,
            in_flight=len(self._in_flight),
            problem="the stream and its consumer group were gone: Redis restarted without "
            "persistence (or they were deleted), and every task queued, pending, delayed or "
            "dead-lettered before is lost; the group was created again and the worker goes on. "
            "Give Redis persistence (appendonly yes) to keep the queue across restarts",
        )

    def _free_slots(self) -> int:
        return min(self._settings.worker_concurrency, self._send_capacity()) - len(self._sending)

    async def _wait_for_slot(self) -> int:
        """Wait until at least one send slot is free; return how many are."""
        while (free := self._free_slots()) <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return free

    async def _wait_for_slots_to_read(self) -> int:
        """Wait for a free slot, then briefly for half of them; return how many are free.

        Each XREADGROUP costs about as much client CPU as sending one email, whatever its
        COUNT: reading one entry per freed slot spent more CPU on Redis than on SMTP. Under load
        slots free in bursts, so waiting a moment reads several entries at once; at low load
        most slots are free and the read goes out at once.
        """
        free = await self._wait_for_slot()
        wanted = max(1, self._settings.worker_concurrency // 2)
        if free >= wanted:
            return free
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_GATHER_SLOTS_SECONDS):
                while self._free_slots() < wanted:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
        return self._free_slots()

    async def _admit(self, entries: list[Entry]) -> None:
        """Ask the shared limiter for the entries' slots (in order), then start each delivery."""
        admissions = await self._pacer.admit(entries)
        for entry, admission in zip(entries, admissions, strict=True):
            self._dispatch(entry, admission)

    def _dispatch(self, entry: Entry, admission: Admission | None) -> None:
        entry_id = entry.entry_id
        self._sending.add(entry_id)
        release = functools.partial(self._release_slot, entry_id)
        deliver = self._delivery.deliver(entry, release, admission)
        task = asyncio.create_task(deliver, name=entry_id)
        self._in_flight[entry_id] = task
        task.add_done_callback(lambda _: self._finished(entry_id))

    def _release_slot(self, entry_id: str) -> None:
        """The delivery no longer sends: its slot may carry the next entry."""
        if entry_id in self._sending:
            self._sending.discard(entry_id)
            self._slot_freed.set()

    def _finished(self, entry_id: str) -> None:
        self._in_flight.pop(entry_id, None)
        self._release_slot(entry_id)

    async def _drain(self) -> int:
        """Finish what is under way within the shutdown deadline; the exit code."""
        in_flight = list(self._in_flight.values())
        log.info("draining", in_flight=len(in_flight))
        await self._wait(in_flight, self._shutdown.drain_remaining())
        unfinished = [task for task in in_flight if not task.done()]
        await cancel_and_wait(
            unfinished, "worker shutdown: the entry stays pending and will be redelivered"
        )
        writes = list(self._delivery.fate_writes)
        await self._wait(writes, self._shutdown.remaining())
        await cancel_and_wait(writes, "worker shutdown: Redis did not answer in time")
        forced = self._shutdown.forced.is_set()
        if not unfinished and not forced:
            await self._leave_group()
        log.info("worker_stopped", unfinished=len(unfinished), forced=forced)
        return 1 if forced else 0

    async def _leave_group(self) -> None:
        """Remove this consumer from the group if it owns nothing, so names do not pile up."""
        try:
            async with asyncio.timeout(self._shutdown.remaining()):
                await self._store.forget_consumer(self.consumer)
        except (TimeoutError, RedisFull, *TRANSIENT_REDIS_ERRORS):  # Redis 6.2: XGROUP is denyoom
            log.info("consumer_left_in_group", consumer=self.consumer)

    async def _wait(self, tasks: Collection[asyncio.Task[Any]], seconds: float) -> None:
        """Until `tasks` are done, `seconds` pass, or the stop is forced."""
        pending: set[asyncio.Future[Any]] = {task for task in tasks if not task.done()}
        if not pending or seconds <= 0:
            return
        forced = asyncio.ensure_future(self._shutdown.forced.wait())
        try:
            async with asyncio.timeout(seconds):
                while pending and not forced.done():
                    _, pending = await asyncio.wait(
                        [*pending, forced], return_when=asyncio.FIRST_COMPLETED
                    )
                    pending.discard(forced)
        except TimeoutError:
            return
        finally:
            forced.cancel()
