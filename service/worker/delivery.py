"""One delivery attempt: decode an entry, send its email, record its fate, log the outcome.

Every attempt ends in one atomic settle: sent, partly sent (refused recipients retried or
dead-lettered), scheduled for a retry, requeued without using an attempt (the SMTP server was
unusable, or asked us to slow down), held back unsent (no room in a quota, a recipient
domain's or the relay's slot too far ahead, or a stop before its slot came), or dead-lettered.
What to write is planned by `fate.py`; this module performs it. Only a crash or a lost Redis
leaves the entry pending, and then another delivery (here or in another worker) takes it over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from ..errors import WireFormatError
from ..settings import WorkerSettings
from ..store import MAX_ENTRY_FIELDS, Entry, QueueStore, SettleReply, SettleWrite
from ..task import addr_spec
from ..wire import QueuedTask, decode_entry
from . import fate
from .backoff import retry_while_unavailable
from .breaker import SmtpBreaker
from .metrics import WorkerMetrics
from .outcome import Decision, decide, is_poison
from .pacing import SET_ASIDE_LEAD_SECONDS, Admission, Pacer
from .relays import Held, RelaySet, decision_via, write_via
from .render import Outgoing, render

__all__ = ["Delivery"]

# The log event and level of each outcome.
_EVENTS: Final = {
    "sent": ("task_sent", logging.INFO),
    "partly_sent": ("task_partly_sent", logging.WARNING),
    "retry": ("task_retry_scheduled", logging.WARNING),
    "requeued": ("task_requeued", logging.INFO),
    "throttled": ("task_throttled", logging.WARNING),
    "held": ("task_held", logging.INFO),
    "dead_letter": ("task_dead_lettered", logging.ERROR),
    "skipped": ("task_already_sent", logging.INFO),
}

log = structlog.get_logger("service.worker")


class Delivery:
    """Delivers entries one at a time each; many `deliver` calls may run concurrently."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: QueueStore,
        *,
        consumer: str,
        smtp: RelaySet,
        breaker: SmtpBreaker,
        metrics: WorkerMetrics,
        pacer: Pacer,
    ) -> None:
        self._settings = settings
        self._pacer = pacer
        self._store = store
        self._consumer = consumer
        self._smtp = smtp
        self._breaker = breaker
        self._metrics = metrics
        self._policy = fate.RetryPolicy.from_settings(settings)
        self._default_mail_from = addr_spec(settings.mail_from)
        # Fate writes run shielded from cancellation; shutdown waits for them before closing.
        self.fate_writes: set[asyncio.Task[SettleReply]] = set()

    async def deliver(
        self, entry: Entry, release: Callable[[], None], admission: Admission | None = None
    ) -> None:
        """Attempt `entry` once. Whatever fails here leaves the entry pending, never lost.

        `release` is called once the attempt needs SMTP no more and only its fate remains to be
        recorded: the caller can start the next send while this one's settle travels.
        `admission` is its slot from the shared limiter (None: no limits).
        """
        started = time.monotonic()
        task_log = log.bind(entry_id=entry.entry_id, deliveries=entry.deliveries)
        try:
            planned, queued = await self._attempt(entry, admission)
            if queued is not None:
                tags = {"tags": queued.task.tags} if queued.task.tags else {}
                task_log = task_log.bind(task_id=queued.task_id, attempt=queued.tries + 1, **tags)
            settled = await self._record(planned.write, release)
        except asyncio.CancelledError:
            task_log.warning("task_interrupted", outcome="pending", **_elapsed(started))
            raise
        except Exception:  # noqa: BLE001 - logged with its traceback; the entry stays pending
            # A bug: the entry stays pending, comes back after the reclaim delay, and is
            # dead-lettered if it keeps failing this way (see `is_poison`).
            task_log.exception("task_error", outcome="pending", **_elapsed(started))
            return
        self._report(planned, queued, settled, task_log, started)

    async def _attempt(
        self, entry: Entry, admission: Admission | None
    ) -> tuple[fate.Fate, QueuedTask | None]:
        """Everything up to the fate write: decode, check, render, send, plan."""
        if len(entry.fields) > MAX_ENTRY_FIELDS:  # no producer writes one; no script copies it
            reason = f"entry has {len(entry.fields)} fields; at most {MAX_ENTRY_FIELDS}"
            return self._give_up(entry, None, reason), None
        try:
            queued = decode_entry(entry.fields)
        except WireFormatError as exc:
            return self._give_up(entry, None, f"undecodable entry: {exc}"), None
        if is_poison(entry.deliveries):
            reason = f"handed out {entry.deliveries} times without an outcome"
            return self._give_up(entry, queued, reason), queued
        if await self._sent_elsewhere(entry, queued):
            return fate.already_sent(entry, queued), queued
        try:
            outgoing = render(
                queued,
                default_sender=self._settings.mail_from,
                default_mail_from=self._default_mail_from,
            )
        except ValueError as exc:  # the email library refused what validation let through
            return self._give_up(entry, queued, f"cannot build the message: {exc}"), queued
        return await self._send(entry, queued, outgoing, admission), queued

    async def _send(
        self, entry: Entry, queued: QueuedTask, outgoing: Outgoing, admission: Admission | None
    ) -> fate.Fate:
        """Wait for the entry's slot, send, and plan the fate of what the server answered."""
        if admission is not None:
            held = await self._wait_for_slot(entry, queued, admission)
            if held is not None:
                return held
        routed = await self._smtp.send(outgoing)
        if isinstance(routed, Held):  # its relay is at its own limit: back until its slot
            due_ms = time.time_ns() // 1_000_000 + int(routed.reopen_s * 1000)
            return fate.hold(entry, queued, routed.reason, due_ms=due_ms)
        relay = routed.relay if self._smtp.several else None
        if routed.relay is not None:  # this delivery's task only: its log lines name the relay
            structlog.contextvars.bind_contextvars(relay=routed.relay)
        decision = decide(
            routed.result,
            outgoing.recipients,
            tries=queued.tries,
            max_attempts=self._policy.max_attempts,
            adaptive=self._pacer.adaptive or self._smtp.adaptive(routed.relay),
        )
        if routed.relay is not None:
            self._metrics.record_relay(routed.relay, _relay_result(decision))
        if relay is not None:
            decision = decision_via(decision, relay)
        if decision.paused:
            self._breaker.pause(decision.reason)
        # A relay with a rate of its own slows down alone; else the queue's rate is lowered.
        if decision.throttled and not (
            routed.relay is not None and await self._smtp.slow_down(routed.relay, decision.reason)
        ):
            await self._pacer.slow_down(decision.reason)
        planned = fate.after_attempt(
            entry,
            queued,
            decision,
            policy=self._policy,
            consumer=self._consumer,
            now_ms=time.time_ns() // 1_000_000,
            jitter=random.random(),  # noqa: S311 - spreading retries, not a secret
        )
        if relay is None:
            return planned
        return dataclasses.replace(planned, write=write_via(planned.write, relay))

    async def _wait_for_slot(
        self, entry: Entry, queued: QueuedTask, admission: Admission
    ) -> fate.Fate | None:
        """Sleep until the entry's slot; the fate that puts it back if it must not be sent now."""
        now_ms = time.time_ns() // 1_000_000
        if admission.set_aside:
            # Due just before its slot: its copy is read again in time to take it.
            due_ms = now_ms + int((admission.reopen_s - SET_ASIDE_LEAD_SECONDS) * 1000)
            return fate.hold(entry, queued, admission.reason, due_ms=due_ms)
        if admission.refused:
            due_ms = now_ms + int(admission.reopen_s * 1000)
            return fate.hold(entry, queued, "send quota reached", due_ms=due_ms)
        if not await self._pacer.wait_turn(admission):
            return fate.hold(entry, queued, "worker stopping before the send's slot", due_ms=now_ms)
        return None

    def _give_up(self, entry: Entry, queued: QueuedTask | None, reason: str) -> fate.Fate:
        now_ms = time.time_ns() // 1_000_000
        return fate.give_up(entry, queued, reason, consumer=self._consumer, now_ms=now_ms)

    async def _sent_elsewhere(self, entry: Entry, queued: QueuedTask) -> bool:
        """Whether another copy of this task was already sent (checked only for copies)."""
        if entry.deliveries == 1 and queued.tries == 0:
            return False  # a first delivery of a first attempt: no other copy can exist
        return await retry_while_unavailable(
            "check_sent", lambda: self._store.was_sent(queued.task_id)
        )

    async def _record(self, write: SettleWrite, release: Callable[[], None]) -> SettleReply:
        """Run a fate write to completion even if the delivery is cancelled meanwhile.

        A Redis outage delays the write (retried with backoff) rather than dropping it: after an
        SMTP accept, an unrecorded ack would mean sending the email again. So does Redis at
        maxmemory refusing a retry copy or a dead letter: the entry stays pending, kept claimed
        by this worker so that no other one takes it over and sends it again meanwhile. The
        attempt's send slot is released as the write starts.
        """
        keep_claimed = functools.partial(
            self._store.keep_claimed, self._consumer, [write.entry_id], write.lane
        )
        task = asyncio.create_task(
            retry_while_unavailable(
                "record_fate", lambda: self._store.settle(write), while_full=keep_claimed
            )
        )
        self.fate_writes.add(task)
        task.add_done_callback(self.fate_writes.discard)
        release()
        return await asyncio.shield(task)

    def _report(
        self,
        planned: fate.Fate,
        queued: QueuedTask | None,
        settled: SettleReply,
        task_log: Any,
        started: float,
    ) -> None:
        """The outcome's log line and metrics."""
        details: dict[str, Any] = {"outcome": planned.outcome, **_elapsed(started)}
        if not settled.took_effect:
            details["settled_elsewhere"] = True
        if planned.reason:
            details["reason"] = planned.reason
        if planned.answer:
            details["smtp_reply"] = planned.answer
        if planned.retry_recipients:
            details.update(retry_recipients=planned.retry_recipients, retry_in_s=planned.retry_in_s)
        if planned.write.dead is not None:
            if planned.dead_recipients:
                details["dead_recipients"] = planned.dead_recipients
            details["dead_letters"] = settled.dead_letters
        latency_ms = None
        if planned.outcome in ("sent", "partly_sent") and queued is not None:
            latency_ms = time.time_ns() // 1_000_000 - queued.dated_ms
        if planned.outcome == "sent":
            details["queued_ms"] = latency_ms
        event, level = _EVENTS[planned.outcome]
        task_log.log(level, event, **details)
        self._metrics.record(
            planned.outcome,
            time.monotonic() - started,
            retried=planned.counted_retry,
            dead=planned.write.dead is not None,
            latency_ms=latency_ms,
        )


def _relay_result(decision: Decision) -> str:
    """What a send did on its relay, for the relay's counts."""
    if decision.accepted:
        return "sent"
    return "unavailable" if decision.paused else "failed"


def _elapsed(started: float) -> dict[str, float]:
    return {"duration_ms": round((time.monotonic() - started) * 1000, 2)}
