"""One delivery attempt: decode an entry, send its email, record its fate, log the outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..errors import WireFormatError
from ..settings import WorkerSettings
from ..wire import decode_entry
from .backoff import retry_while_unavailable
from .outcome import Fate, classify_failure, fate_after_failure, is_exhausted
from .render import render
from .smtp import SmtpPool
from .stream import Entry, TaskStream

__all__ = ["Delivery"]

log = structlog.get_logger("service.worker")


class Delivery:
    """Delivers entries one at a time each; many `deliver` calls may run concurrently."""

    def __init__(self, settings: WorkerSettings, stream: TaskStream, smtp: SmtpPool) -> None:
        self._default_sender = settings.mail_from
        self._max_attempts = settings.worker_max_attempts
        self._stream = stream
        self._smtp = smtp
        # Fate writes run shielded from cancellation; shutdown waits for them before closing.
        self.fate_writes: set[asyncio.Task[None]] = set()

    async def deliver(self, entry: Entry) -> None:
        """Attempt `entry` once. Whatever fails here leaves the entry pending, never lost."""
        started = time.monotonic()
        task_log = log.bind(entry_id=entry.entry_id, attempt=entry.deliveries)
        try:
            await self._attempt(entry, task_log, started)
        except asyncio.CancelledError:
            task_log.warning("task_interrupted", outcome=Fate.RETRY.value, **_elapsed(started))
            raise
        except Exception:  # noqa: BLE001 - logged with its traceback; the entry stays pending
            # A bug, or a message the email library refuses: the entry stays pending, comes
            # back after the reclaim delay and is dead-lettered once its attempts run out.
            task_log.exception("task_error", outcome=Fate.RETRY.value, **_elapsed(started))

    async def _attempt(self, entry: Entry, task_log: Any, started: float) -> None:
        try:
            envelope = decode_entry(entry.fields)
        except WireFormatError as exc:
            await self._dead_letter(entry, f"undecodable entry: {exc}", task_log, started)
            return
        task_log = task_log.bind(task_id=envelope.task_id)
        if is_exhausted(entry.deliveries, max_attempts=self._max_attempts):
            reason = f"delivered {entry.deliveries} times without success"
            await self._dead_letter(entry, reason, task_log, started)
            return
        try:
            outgoing = render(envelope, default_sender=self._default_sender)
        except ValueError as exc:  # the email library refused what validation let through
            await self._dead_letter(entry, f"cannot build the message: {exc}", task_log, started)
            return
        try:
            refused = await self._smtp.send(outgoing)
        except Exception as exc:  # noqa: BLE001 - every send failure is classified
            failure = classify_failure(exc)
            fate = fate_after_failure(
                failure, attempt=entry.deliveries, max_attempts=self._max_attempts
            )
            if fate is Fate.DEAD_LETTER:
                await self._dead_letter(entry, failure.reason, task_log, started)
            else:
                task_log.warning(
                    "task_failed", outcome=fate.value, reason=failure.reason, **_elapsed(started)
                )
            return
        await self._record(lambda: self._stream.ack([entry.entry_id]))
        task_log.info(
            "task_sent",
            outcome=Fate.ACK.value,
            refused=sorted(refused) or None,
            queued_ms=time.time_ns() // 1_000_000 - envelope.enqueued_at_ms,
            **_elapsed(started),
        )

    async def _dead_letter(self, entry: Entry, reason: str, task_log: Any, started: float) -> None:
        await self._record(lambda: self._stream.dead_letter(entry, reason))
        task_log.error(
            "task_dead_lettered", outcome=Fate.DEAD_LETTER.value, reason=reason, **_elapsed(started)
        )

    async def _record(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run a fate write to completion even if the delivery is cancelled meanwhile.

        A Redis outage delays the write (retried with backoff) rather than dropping it: after an
        SMTP accept, an unrecorded ack would mean sending the email again.
        """
        task = asyncio.create_task(retry_while_unavailable("record_fate", write))
        self.fate_writes.add(task)
        task.add_done_callback(self.fate_writes.discard)
        await asyncio.shield(task)


def _elapsed(started: float) -> dict[str, float]:
    return {"duration_ms": round((time.monotonic() - started) * 1000, 2)}
