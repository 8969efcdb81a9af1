"""What to write after an attempt: a pure plan, tested as a table (`tests/unit/test_fate.py`).

Every way a delivery ends maps to one `Fate`: the `SettleWrite` that records it in Redis in one
atomic step (acknowledge; a retry copy with its due time and recipients; a dead-letter record
with its reason), and what the log line and the metrics say about it. `delivery.py` performs it
in a few lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from ..settings import WorkerSettings
from ..store import MAX_ENTRY_FIELDS, Entry, RetryCopy, SettleWrite, StatusNote
from ..wire import QueuedTask, dead_entry, retry_entry
from .backoff import backoff_delay
from .outcome import Decision

__all__ = [
    "Fate",
    "RetryPolicy",
    "after_attempt",
    "already_sent",
    "give_up",
    "hold",
    "status_after",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how late a task is tried again (WORKER_MAX_ATTEMPTS, WORKER_RETRY_*)."""

    max_attempts: int
    first_delay_s: float
    max_delay_s: float

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Self:
        """The policy the settings describe."""
        return cls(
            max_attempts=settings.worker_max_attempts,
            first_delay_s=settings.worker_retry_base_seconds,
            max_delay_s=settings.worker_retry_max_seconds,
        )


@dataclass(frozen=True, slots=True)
class Fate:
    """How one delivery ends: what to write, and what to say about it."""

    write: SettleWrite
    outcome: str  # sent, partly_sent, retry, requeued, throttled, held, dead_letter or skipped
    reason: str = ""
    retry_recipients: int = 0
    retry_in_s: float = 0.0
    dead_recipients: int = 0
    counted_retry: bool = False  # a retry copy that used an attempt (not a pause's requeue)
    answer: str = ""  # the server's reply to the message, when it took it


def after_attempt(
    entry: Entry,
    queued: QueuedTask,
    decision: Decision,
    *,
    policy: RetryPolicy,
    consumer: str,
    now_ms: int,
    jitter: float,
) -> Fate:
    """The fate of an attempt that reached the SMTP server (or tried to) and ended so.

    A retry is due after the policy's backoff (`jitter`, 0 to 1, picks where within it), or at
    once after a pause or a "slow down", which used no attempt (the shared limiter, slowed
    down, paces it).
    """
    retry = None
    retry_in = 0.0
    uncounted = decision.paused or decision.throttled
    if decision.retry:
        if not uncounted:
            retry_in = backoff_delay(
                decision.tries,
                first=policy.first_delay_s,
                cap=policy.max_delay_s,
                jitter=jitter,
            )
        copy = retry_entry(
            _lane_fields(entry),
            tries=decision.tries,
            recipients=decision.retry,
            error=decision.reason,
        )
        retry = RetryCopy(now_ms + int(retry_in * 1000), copy)
    dead = None
    if decision.dead:
        everyone = decision.dead == tuple(queued.envelope_recipients())
        dead = dead_entry(
            _lane_fields(entry),
            reason=decision.dead_reason,
            entry_id=entry.entry_id,
            deliveries=entry.deliveries,
            tries=decision.tries,
            consumer=consumer,
            recipients=None if everyone else decision.dead,
            dead_at_ms=now_ms,
        )
    write = SettleWrite(
        entry.entry_id,
        task_id=queued.task_id,
        sent_record=decision.finished,
        retry=retry,
        dead=dead,
        status=status_after(decision, tries=queued.tries),
        lane=entry.lane,
    )
    return Fate(
        write,
        decision.outcome,
        reason=decision.reason,
        retry_recipients=len(decision.retry),
        retry_in_s=round(retry_in, 1),
        dead_recipients=len(decision.dead),
        counted_retry=bool(decision.retry) and not uncounted,
        answer=decision.answer,
    )


def hold(entry: Entry, queued: QueuedTask, reason: str, *, due_ms: int) -> Fate:
    """Put an entry back, due at `due_ms`, without sending it or using an attempt: the quota
    has no room for it, its recipient domain's slot is further ahead than the worker reads, or
    the worker stops before its slot came."""
    copy = retry_entry(
        _lane_fields(entry),
        tries=queued.tries,
        recipients=queued.envelope_recipients(),
        error=reason,
    )
    note = StatusNote("retrying", attempts=queued.tries, text=reason)
    write = SettleWrite(
        entry.entry_id,
        task_id=queued.task_id,
        retry=RetryCopy(due_ms, copy),
        status=note,
        lane=entry.lane,
    )
    recipients = len(queued.envelope_recipients())
    return Fate(write, "held", reason, retry_recipients=recipients)


def give_up(
    entry: Entry, queued: QueuedTask | None, reason: str, *, consumer: str, now_ms: int
) -> Fate:
    """Dead-letter an entry that no attempt could ever send (`queued` None: undecodable).

    An entry with more fields than a script can copy keeps its first `MAX_ENTRY_FIELDS` (a
    producer writes its own first) and counts the others in `dead_fields_dropped`.
    """
    fields = _lane_fields(entry)
    dropped = len(fields) - MAX_ENTRY_FIELDS
    if dropped > 0:
        kept = dict(list(fields.items())[:MAX_ENTRY_FIELDS])
        fields = {**kept, b"dead_fields_dropped": str(dropped).encode()}
    record = dead_entry(
        fields,
        reason=reason,
        entry_id=entry.entry_id,
        deliveries=entry.deliveries,
        tries=queued.tries if queued else 0,
        consumer=consumer,
        dead_at_ms=now_ms,
    )
    task_id = queued.task_id if queued else ""
    note = StatusNote("dead", attempts=queued.tries if queued else 0, text=reason)
    write = SettleWrite(entry.entry_id, task_id=task_id, dead=record, status=note, lane=entry.lane)
    return Fate(write, "dead_letter", reason)


def already_sent(entry: Entry, queued: QueuedTask) -> Fate:
    """Acknowledge a copy of a task that another copy already sent."""
    note = StatusNote("sent_copy", attempts=queued.tries)
    write = SettleWrite(entry.entry_id, task_id=queued.task_id, status=note, lane=entry.lane)
    return Fate(write, "skipped")


def status_after(decision: Decision, *, tries: int) -> StatusNote:
    """What the task's status says after an attempt (`tries`: failed attempts before it).

    Recipients left to retry make it retrying, whatever happened to the others; else any
    accepted recipient makes it sent (those given up on are in the dead letters); else dead.
    """
    if decision.retry:
        return StatusNote("retrying", attempts=decision.tries, text=decision.reason)
    if decision.accepted:
        return StatusNote("sent", attempts=tries, text=decision.answer)
    return StatusNote("dead", attempts=decision.tries, text=decision.dead_reason)


def _lane_fields(entry: Entry) -> dict[bytes, bytes]:
    """The entry's fields, naming the lane it was read from: the scripts put a retry copy and a
    requeued dead letter into the lane their `lane` field names, so they go back to this one
    even if the entry was added to its lane without the field."""
    if entry.lane == "normal" or entry.fields.get(b"lane") == entry.lane.encode():
        return entry.fields
    others = {name: value for name, value in entry.fields.items() if name != b"lane"}
    return {b"lane": entry.lane.encode(), **others}  # first: kept by any truncation
