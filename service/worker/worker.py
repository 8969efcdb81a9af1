"""The worker's lifecycle: read, reclaim, deliver with bounded concurrency, drain on shutdown.

Two loops feed delivery tasks on one event loop:

- the reader takes new entries (XREADGROUP) whenever a send slot is free;
- the reclaimer takes over entries that a consumer (usually a dead one) left pending longer
  than `WORKER_RECLAIM_IDLE_SECONDS`.

Both wait while the SMTP breaker is open. Beside them run the breaker's probe, the promotion
of due retries and scheduled sends into the stream, and a periodic report of the queue's sizes.

`request_stop` (called by the signal handlers) only sets state; `run` turns it into a shutdown:
stop intake, give in-flight sends `WORKER_SHUTDOWN_SECONDS`, cancel the rest (their entries stay
pending and another worker takes them over), and return the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Final

import structlog

from ..connection import READ_BLOCK_MS
from ..settings import WorkerSettings
from .backoff import TRANSIENT_REDIS_ERRORS, retry_while_unavailable
from .breaker import SmtpBreaker
from .delivery import Delivery
from .stopping import cancel_and_wait
from .stream import Entry, TaskStream
from .upkeep import promote_forever, report_forever

__all__ = ["Worker"]

log = structlog.get_logger("service.worker")

# Fate writes still running at shutdown get this long (after the drain) to reach Redis.
_FATE_WRITE_GRACE_SECONDS: Final = 5.0
# The longest a read waits for more send slots to free once one is (see _wait_for_slots_to_read).
_GATHER_SLOTS_SECONDS: Final = 0.002
# The pause before the next read when the last one emptied the stream. Tasks arriving one at a
# time each cost a read, a settle and a wake-up of their own: about 2.4 times the client CPU of
# an email read in a batch (measured at 1,000 emails/s). A short pause lets arrivals share them,
# for at most this much added latency; the next read still blocks when nothing came meanwhile.
_GATHER_ARRIVALS_SECONDS: Final = 0.002


class Worker:
    """Delivers the entries of one queue until asked to stop."""

    def __init__(
        self,
        settings: WorkerSettings,
        stream: TaskStream,
        delivery: Delivery,
        breaker: SmtpBreaker,
    ) -> None:
        self._settings = settings
        self._stream = stream
        self._delivery = delivery
        self._breaker = breaker
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
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

    @property
    def state(self) -> str:
        """What the worker is doing: starting, sending, paused (SMTP unusable) or draining."""
        if self._stopping.is_set():
            return "draining"
        if not self._started:
            return "starting"
        return "paused" if self._breaker.is_open else "sending"

    @property
    def in_flight(self) -> int:
        """Sends under way (each holds one SMTP connection)."""
        return len(self._sending)

    def request_stop(self, signal_name: str) -> None:
        """First call: drain, then stop. Second call: stop at once. Only sets state."""
        if self._stopping.is_set():
            self._forced.set()
        else:
            self._stopping.set()
        log.info("stop_requested", signal=signal_name, forced=self._forced.is_set())

    async def run(self) -> int:
        """Work until `request_stop`; return the process exit code (0 drained, 1 forced)."""
        intake = asyncio.create_task(self._intake(), name="intake")
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([intake, stop], return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait([intake, stop, *self._loops], "worker stopping")
        failed = intake in done and intake.exception() is not None
        if failed:
            log.error("worker_failed", exc_info=intake.exception())
        code = await self._drain()
        return 1 if failed else code

    async def _intake(self) -> None:
        await retry_while_unavailable("create_group", self._stream.ensure_group)
        log.info(
            "worker_started",
            consumer=self._stream.consumer,
            queue=self._settings.email_queue,
            concurrency=self._settings.worker_concurrency,
        )
        self._started = True
        await self._resume_own_pending()
        if self._stopping.is_set():
            return  # a cancellation lost on the way here (see stopping.py): start nothing
        # Plain tasks, not a TaskGroup: a TaskGroup cancels its tasks once, and a loop that lost
        # that cancellation would keep the worker from stopping. `run` cancels each of these
        # until it has ended.
        self._loops = [
            asyncio.create_task(coroutine, name=name)
            for name, coroutine in (
                ("breaker", self._breaker.run()),
                ("promote", promote_forever(self._stream)),
                ("report", report_forever(self._stream)),
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
        entries = await retry_while_unavailable(
            "resume_pending", lambda: self._stream.take_own_pending(count)
        )
        if entries:
            log.info("resuming_pending", entries=len(entries))
        for entry in entries:
            await self._wait_for_slot()
            self._dispatch(entry)

    async def _read_loop(self) -> None:
        while True:
            async with self._intake_turn:
                await self._breaker.wait_closed()
                free = await self._wait_for_slots_to_read()
                entries = await retry_while_unavailable(
                    "read", functools.partial(self._stream.read_new, free, READ_BLOCK_MS)
                )
                for entry in entries:
                    self._dispatch(entry)
            # The stream is empty (the read got fewer entries than it asked for) but tasks are
            # arriving: let a few gather rather than read each alone (_GATHER_ARRIVALS_SECONDS).
            caught_up = 0 < len(entries) < free
            await asyncio.sleep(_GATHER_ARRIVALS_SECONDS if caught_up else 0)

    async def _reclaim_loop(self) -> None:
        idle_seconds = self._settings.worker_reclaim_idle_seconds
        min_idle_ms = int(idle_seconds * 1000)
        # Scan a few times per idle period, so a dead worker's entries wait at most ~1.25x it.
        interval = min(max(idle_seconds / 4, 0.1), 30.0)
        cursor = "0-0"
        while True:
            async with self._intake_turn:
                await self._breaker.wait_closed()
                free = await self._wait_for_slot()
                cursor, entries = await retry_while_unavailable(
                    "reclaim",
                    functools.partial(self._stream.claim_stale, min_idle_ms, cursor, free),
                )
                for entry in entries:
                    if entry.entry_id in self._in_flight:
                        continue  # our own slow send; it records its fate itself
                    log.info("entry_reclaimed", entry_id=entry.entry_id, attempt=entry.deliveries)
                    self._dispatch(entry)
            if cursor == "0-0":
                await asyncio.sleep(interval)

    def _free_slots(self) -> int:
        return self._settings.worker_concurrency - len(self._sending)

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

    def _dispatch(self, entry: Entry) -> None:
        entry_id = entry.entry_id
        self._sending.add(entry_id)
        release = functools.partial(self._release_slot, entry_id)
        task = asyncio.create_task(self._delivery.deliver(entry, release), name=entry_id)
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
        in_flight = list(self._in_flight.values())
        log.info("draining", in_flight=len(in_flight))
        await self._wait_in_flight(in_flight)
        unfinished = [task for task in in_flight if not task.done()]
        await cancel_and_wait(
            unfinished, "worker shutdown: the entry stays pending and will be redelivered"
        )
        writes = self._delivery.fate_writes
        if writes and not self._forced.is_set():
            _, late = await asyncio.wait(writes, timeout=_FATE_WRITE_GRACE_SECONDS)
            await cancel_and_wait(late, "worker shutdown: Redis did not answer in time")
        forced = self._forced.is_set()
        if not unfinished and not forced:
            await self._leave_group()
        log.info("worker_stopped", unfinished=len(unfinished), forced=forced)
        return 1 if forced else 0

    async def _leave_group(self) -> None:
        """Remove this consumer from the group if it owns nothing, so names do not pile up."""
        try:
            async with asyncio.timeout(_FATE_WRITE_GRACE_SECONDS):
                await self._stream.forget_consumer()
        except (TimeoutError, *TRANSIENT_REDIS_ERRORS):
            log.info("consumer_left_in_group", consumer=self._stream.consumer)

    async def _wait_in_flight(self, in_flight: list[asyncio.Task[None]]) -> None:
        """Until every send is done, the grace period ends, or a second signal arrives."""
        deadline = time.monotonic() + self._settings.worker_shutdown_seconds
        forced = asyncio.create_task(self._forced.wait())
        pending: set[asyncio.Task[object]] = set(in_flight)
        try:
            while pending and not forced.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                _, pending = await asyncio.wait(
                    [*pending, forced], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(forced)
        finally:
            forced.cancel()
