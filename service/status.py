"""Where a task is: the answer of `Producer.status` and `Producer.cancel` (and `admin task`).

The status ledger keeps one small record per task for `TASK_STATUS_TTL_SECONDS` after its last
change (7 days by default), written by the same atomic Redis steps that move the task, so it
never disagrees with the queue. "sending" is not written: it is read from the consumer group
(the task's entry is held by a worker), which keeps the worker's hot path to one write per
email.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = ["DEFAULT_STATUS_TTL", "CancelResult", "TaskState", "TaskStatus", "is_task_id"]

# How long a task's status is kept after its last change, unless told otherwise.
DEFAULT_STATUS_TTL: Final = timedelta(days=7)

_TASK_ID = re.compile(r"[0-9a-f]{32}")


class TaskState(enum.StrEnum):
    """Where a task is now."""

    QUEUED = "queued"  # in the stream, not yet taken by a worker
    SCHEDULED = "scheduled"  # waiting for its send time (`due_at`)
    SENDING = "sending"  # a worker holds it: an attempt is under way
    RETRYING = "retrying"  # an attempt failed; the next is due at `due_at`
    SENT = "sent"  # the SMTP server accepted it (`reply`: what it answered to the email)
    DEAD = "dead"  # given up on (`reason`); an operator may requeue it
    CANCELLED = "cancelled"  # cancelled before it was sent: it will never be sent
    UNKNOWN = "unknown"  # never seen, or its record expired


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task's state and what goes with it; fields that do not apply to the state are None
    (or empty)."""

    task_id: str
    state: TaskState
    changed_at: datetime | None = None  # the last change of state (UTC)
    due_at: datetime | None = None  # scheduled and retrying: when it is (next) due
    attempts: int | None = None  # failed attempts so far (retrying, and later states)
    reply: str = ""  # retrying: the last failure; sent: the server's reply to the email
    reason: str = ""  # dead: why it was given up
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The status as JSON-ready values (times as ISO 8601, absent fields left out)."""
        out: dict[str, Any] = {"task_id": self.task_id, "state": str(self.state)}
        for name, when in (("changed_at", self.changed_at), ("due_at", self.due_at)):
            if when is not None:
                out[name] = when.isoformat()
        if self.attempts is not None:
            out["attempts"] = self.attempts
        if self.reply:
            out["reply"] = self.reply
        if self.reason:
            out["reason"] = self.reason
        out["tags"] = list(self.tags)
        return out


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel did. `cancelled`: the task will never be sent, and `was` is the state it
    was cancelled from (queued, scheduled or retrying). Otherwise `was` says why not: sending,
    sent, dead, cancelled (already) or unknown."""

    task_id: str
    cancelled: bool
    was: TaskState

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        return {"task_id": self.task_id, "cancelled": self.cancelled, "was": str(self.was)}


def from_ms(ms: int | None) -> datetime | None:
    """A time in milliseconds since the epoch as an aware UTC datetime."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def is_task_id(text: str) -> bool:
    """Whether `text` has the shape of a task id (32 lowercase hex characters)."""
    return isinstance(text, str) and _TASK_ID.fullmatch(text) is not None
