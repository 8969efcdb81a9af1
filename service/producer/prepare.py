"""What both producers do before Redis: check the options, give each task its id and entry,
and decide whether a batch may skip the exact backlog check (pure; no I/O)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Self

from ..errors import EmailTooLarge
from ..store import NewTask
from ..task import EmailTask
from ..wire import encode_entry

__all__ = [
    "DEFAULT_IDEMPOTENCY_WINDOW",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_EMAIL_BYTES",
    "Delay",
    "Limits",
    "is_plain",
    "new_tasks",
]

# About 150 MB of 1 KB emails: far below what a queue's Redis should hold, far above a healthy
# backlog. Size it to your Redis (`max_backlog=`); None disables the check.
DEFAULT_MAX_BACKLOG: Final = 100_000
DEFAULT_IDEMPOTENCY_WINDOW: Final = timedelta(hours=24)
# Many providers refuse messages past 10 to 25 MB (Gmail 25, SES 10 by default, counted as
# sent, base64 included); a file larger than this is better sent as a link.
DEFAULT_MAX_EMAIL_BYTES: Final = 10 * 1024 * 1024
_MAX_DELAY: Final = timedelta(days=366)
_MAX_KEY_CHARS: Final = 200

Delay = timedelta | float | int


@dataclass(frozen=True, slots=True)
class Limits:
    """A producer's backlog limit (0: none), idempotency window and per-email size, checked."""

    max_backlog: int
    window_ms: int
    max_email_bytes: int = DEFAULT_MAX_EMAIL_BYTES

    @classmethod
    def checked(
        cls,
        max_backlog: int | None,
        idempotency_window: timedelta,
        max_email_bytes: int = DEFAULT_MAX_EMAIL_BYTES,
    ) -> Self:
        """The limits, or ValueError naming the bad one."""
        if max_backlog is not None and max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1 (or None), not {max_backlog}")
        if idempotency_window <= timedelta(0):
            raise ValueError("idempotency_window must be positive")
        if max_email_bytes < 1:
            raise ValueError(f"max_email_bytes must be at least 1, not {max_email_bytes}")
        window_ms = int(idempotency_window.total_seconds() * 1000)
        return cls(max_backlog or 0, window_ms, max_email_bytes)


def new_tasks(
    tasks: Iterable[EmailTask],
    *,
    send_at: datetime | None = None,
    delay: Delay | None = None,
    idempotency_key: str | None = None,
    queue: str,
    max_email_bytes: int,
) -> list[NewTask]:
    """Each task with a new id and its entry's fields; ValueError or TypeError, before anything
    is sent, for a bad option or something that is not a task, and `EmailTooLarge` for a task
    past `max_email_bytes`."""
    if idempotency_key is not None:
        _check_key(idempotency_key)
    due_ms = _due_ms(send_at, delay)
    return [_new_task(task, due_ms, idempotency_key, queue, max_email_bytes) for task in tasks]


def is_plain(tasks: Iterable[NewTask]) -> bool:
    """Whether every task is due now and has no idempotency key (see `backlog`)."""
    return all(not task.due_ms and task.idempotency_key is None for task in tasks)


def _new_task(
    task: EmailTask, due_ms: int | None, idempotency_key: str | None, queue: str, max_bytes: int
) -> NewTask:
    if not isinstance(task, EmailTask):
        raise TypeError(f"expected an EmailTask, got {type(task).__name__}")
    size = task.encoded_size()
    if size > max_bytes:
        raise EmailTooLarge(queue, field=_largest_field(task), size=size, limit=max_bytes)
    # A task id is 128 random bits as 32 hex digits (`status.is_task_id`): token_hex gives
    # them without the UUID object uuid4 builds around the same bytes, on every enqueue.
    task_id = secrets.token_hex(16)
    now_ms = time.time_ns() // 1_000_000
    fields = encode_entry(task, task_id, now_ms, due_ms=due_ms)
    due = due_ms if due_ms is not None and due_ms > now_ms else 0
    return NewTask(task_id, fields, due, idempotency_key, tuple(task.tags))


def _largest_field(task: EmailTask) -> str:
    """The field that holds most of an email's bytes, for the error that refuses it."""
    sizes = {
        "text": len(task.text or ""),
        "html": len(task.html or ""),
        "attachments": sum(len(attachment.content) for attachment in task.attachments),
    }
    return max(sizes, key=sizes.__getitem__)


def _due_ms(send_at: datetime | None, delay: Delay | None) -> int | None:
    """When a scheduled task is due (ms since the epoch), or None to send it now."""
    if send_at is not None and delay is not None:
        raise ValueError("give send_at or delay, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not 0 <= seconds <= _MAX_DELAY.total_seconds():
            raise ValueError(f"delay must be between 0 and {_MAX_DELAY.days} days")
        return time.time_ns() // 1_000_000 + int(seconds * 1000)
    if send_at is not None:
        if send_at.tzinfo is None or send_at.utcoffset() is None:
            raise ValueError("send_at must be timezone-aware (e.g. datetime.now(UTC))")
        if send_at - datetime.now(UTC) > _MAX_DELAY:
            raise ValueError(f"send_at must be within {_MAX_DELAY.days} days")
        return int(send_at.timestamp() * 1000)
    return None


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_CHARS:
        raise ValueError(f"idempotency_key must be a string of 1 to {_MAX_KEY_CHARS} characters")
    if not key.isprintable():
        raise ValueError("idempotency_key must not contain control characters")
