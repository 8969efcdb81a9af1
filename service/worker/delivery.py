"""One delivery attempt: decode an entry, send its email, settle its fate, log the outcome.

Every attempt ends in one atomic settle (`TaskStream.settle`): sent, partly sent (refused
recipients retried or dead-lettered), scheduled for a retry, requeued without using an attempt
(the SMTP server was unusable), or dead-lettered. Only a crash or a lost Redis leaves the entry
pending, and then another delivery (here or in another worker) takes it over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import aiosmtplib
import structlog

from ..errors import WireFormatError
from ..settings import WorkerSettings
from ..task import addr_spec
from ..wire import Envelope, dead_entry, decode_entry, retry_entry
from .backoff import backoff_delay, retry_while_unavailable
from .breaker import SmtpBreaker
from .metrics import WorkerMetrics
from .outcome import Settlement, Verdict, after_failure, after_send, classify_failure, is_poison
from .render import Outgoing, render
from .smtp import SmtpPool
from .stream import Entry, TaskStream

__all__ = ["Delivery"]

T = TypeVar("T")

# The log event and level of each settlement outcome.
_EVENTS: Final = {
    "sent": ("task_sent", logging.INFO),
    "partly_sent": ("task_partly_sent", logging.WARNING),
    "retry": ("task_retry_scheduled", logging.WARNING),
    "requeued": ("task_requeued", logging.INFO),
    "dead_letter": ("task_dead_lettered", logging.ERROR),
}

log = structlog.get_logger("service.worker")


class Delivery:
    """Delivers entries one at a time each; many `deliver` calls may run concurrently."""

    def __init__(
        self,
        settings: WorkerSettings,
        stream: TaskStream,
        smtp: SmtpPool,
        breaker: SmtpBreaker,
        metrics: WorkerMetrics,
    ) -> None:
        self._settings = settings
        self._stream = stream
        self._smtp = smtp
        self._breaker = breaker
        self._metrics = metrics
        self._default_mail_from = addr_spec(settings.mail_from)
        # Fate writes run shielded from cancellation; shutdown waits for them before closing.
        self.fate_writes: set[asyncio.Task[Any]] = set()

    async def deliver(self, entry: Entry, release: Callable[[], None]) -> None:
        """Attempt `entry` once. Whatever fails here leaves the entry pending, never lost.

        `release` is called once the attempt needs SMTP no more and only its fate remains to be
        recorded: the caller can start the next send while this one's settle travels.
        """
        started = time.monotonic()
        task_log = log.bind(entry_id=entry.entry_id, deliveries=entry.deliveries)
        try:
            await self._attempt(entry, task_log, started, release)
        except asyncio.CancelledError:
            task_log.warning("task_interrupted", outcome="pending", **_elapsed(started))
            raise
        except Exception:  # noqa: BLE001 - logged with its traceback; the entry stays pending
            # A bug: the entry stays pending, comes back after the reclaim delay, and is
            # dead-lettered if it keeps failing this way (see `is_poison`).
            task_log.exception("task_error", outcome="pending", **_elapsed(started))

    async def _attempt(
        self, entry: Entry, task_log: Any, started: float, release: Callable[[], None]
    ) -> None:
        try:
            envelope = decode_entry(entry.fields)
        except WireFormatError as exc:
            reason = f"undecodable entry: {exc}"
            await self._give_up(entry, None, reason, task_log, started, release=release)
            return
        task_log = task_log.bind(task_id=envelope.task_id, attempt=envelope.tries + 1)
        if is_poison(entry.deliveries):
            reason = f"handed out {entry.deliveries} times without an outcome"
            await self._give_up(entry, envelope, reason, task_log, started, release=release)
            return
        if await self._sent_elsewhere(entry, envelope):
            await self._record(
                lambda: self._stream.settle(entry, task_id=envelope.task_id), release
            )
            task_log.info("task_already_sent", outcome="skipped", **_elapsed(started))
            self._metrics.record("skipped", time.monotonic() - started)
            return
        try:
            outgoing = render(
                envelope,
                default_sender=self._settings.mail_from,
                default_mail_from=self._default_mail_from,
            )
        except ValueError as exc:  # the email library refused what validation let through
            reason = f"cannot build the message: {exc}"
            await self._give_up(entry, envelope, reason, task_log, started, release=release)
            return
        settlement = await self._send(outgoing, envelope)
        await self._settle(entry, envelope, settlement, task_log, started, release=release)

    async def _sent_elsewhere(self, entry: Entry, envelope: Envelope) -> bool:
        """Whether another copy of this task was already sent (checked only for copies)."""
        if entry.deliveries == 1 and envelope.tries == 0:
            return False  # a first delivery of a first attempt: no other copy can exist
        return await retry_while_unavailable(
            "check_sent", lambda: self._stream.was_sent(envelope.task_id)
        )

    async def _send(self, outgoing: Outgoing, envelope: Envelope) -> Settlement:
        recipients = outgoing.recipients
        tries, max_attempts = envelope.tries, self._settings.worker_max_attempts
        try:
            refused = await self._smtp.send(outgoing)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            replies = {r.recipient: (r.code, r.message) for r in exc.recipients}
            return after_send(recipients, replies, tries=tries, max_attempts=max_attempts)
        except Exception as exc:  # noqa: BLE001 - every send failure is classified
            failure = classify_failure(exc)
            if failure.verdict is Verdict.PAUSE:
                self._breaker.trip(failure.reason)
            return after_failure(failure, recipients, tries=tries, max_attempts=max_attempts)
        replies = {recipient: (r.code, r.message) for recipient, r in refused.items()}
        return after_send(recipients, replies, tries=tries, max_attempts=max_attempts)

    async def _settle(
        self,
        entry: Entry,
        envelope: Envelope,
        settlement: Settlement,
        task_log: Any,
        started: float,
        *,
        release: Callable[[], None],
    ) -> None:
        retry = None
        retry_in = 0.0
        if settlement.retry:
            if not settlement.paused:
                retry_in = backoff_delay(
                    settlement.tries,
                    first=self._settings.worker_retry_base_seconds,
                    cap=self._settings.worker_retry_max_seconds,
                )
            due_ms = time.time_ns() // 1_000_000 + int(retry_in * 1000)
            copy = retry_entry(
                entry.fields,
                tries=settlement.tries,
                recipients=settlement.retry,
                error=settlement.reason,
            )
            retry = (due_ms, copy)
        dead = None
        if settlement.dead:
            everyone = settlement.dead == tuple(envelope.envelope_recipients())
            dead = self._dead_record(
                entry,
                settlement.dead_reason,
                tries=settlement.tries,
                recipients=None if everyone else settlement.dead,
            )
        settled = await self._record(
            lambda: self._stream.settle(
                entry,
                task_id=envelope.task_id,
                sent_record=settlement.finished,
                retry=retry,
                dead=dead,
            ),
            release,
        )
        details: dict[str, Any] = {"outcome": settlement.outcome, **_elapsed(started)}
        if not settled.took_effect:
            details["settled_elsewhere"] = True
        if settlement.reason:
            details["reason"] = settlement.reason
        if settlement.retry:
            details.update(retry_recipients=len(settlement.retry), retry_in_s=round(retry_in, 1))
        if settlement.dead:
            details.update(dead_recipients=len(settlement.dead), dead_letters=settled.dead_letters)
        if settlement.outcome == "sent":
            details["queued_ms"] = time.time_ns() // 1_000_000 - envelope.dated_ms
        event, level = _EVENTS[settlement.outcome]
        task_log.log(level, event, **details)
        self._metrics.record(
            settlement.outcome,
            time.monotonic() - started,
            retried=bool(settlement.retry) and not settlement.paused,
            dead=bool(settlement.dead),
        )

    async def _give_up(
        self,
        entry: Entry,
        envelope: Envelope | None,
        reason: str,
        task_log: Any,
        started: float,
        *,
        release: Callable[[], None],
    ) -> None:
        """Dead-letter an entry that no attempt could ever send."""
        tries = envelope.tries if envelope else 0
        record = self._dead_record(entry, reason, tries=tries, recipients=None)
        task_id = envelope.task_id if envelope else ""
        settled = await self._record(
            lambda: self._stream.settle(entry, task_id=task_id, dead=record), release
        )
        task_log.error(
            "task_dead_lettered",
            outcome="dead_letter",
            reason=reason,
            dead_letters=settled.dead_letters,
            **_elapsed(started),
        )
        self._metrics.record("dead_letter", time.monotonic() - started, dead=True)

    def _dead_record(
        self, entry: Entry, reason: str, *, tries: int, recipients: tuple[str, ...] | None
    ) -> dict[bytes, bytes]:
        return dead_entry(
            entry.fields,
            reason=reason,
            entry_id=entry.entry_id,
            deliveries=entry.deliveries,
            tries=tries,
            consumer=self._stream.consumer,
            recipients=recipients,
        )

    async def _record(self, write: Callable[[], Awaitable[T]], release: Callable[[], None]) -> T:
        """Run a fate write to completion even if the delivery is cancelled meanwhile.

        A Redis outage delays the write (retried with backoff) rather than dropping it: after an
        SMTP accept, an unrecorded ack would mean sending the email again. The attempt's send
        slot is released as the write starts.
        """
        task = asyncio.create_task(retry_while_unavailable("record_fate", write))
        self.fate_writes.add(task)
        task.add_done_callback(self.fate_writes.discard)
        release()
        return await asyncio.shield(task)


def _elapsed(started: float) -> dict[str, float]:
    return {"duration_ms": round((time.monotonic() - started) * 1000, 2)}
