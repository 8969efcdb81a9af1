"""The shapes of Redis's replies and errors, read in one place (pure functions, no I/O).

The client is pinned to RESP2 with `decode_responses=False` (see `service.connection`), so every
reply below has one shape on every supported server and redis-py version: ids and names arrive
as bytes, entries as `[id, {field: value}]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)

from ..errors import EnqueueError, QueueFull, QueueUnavailable
from ..keys import Lane
from ..status import CancelResult, TaskState, TaskStatus, from_ms

__all__ = [
    "ConsumerInfo",
    "Entry",
    "GroupInfo",
    "as_str",
    "autoclaimed",
    "cancel_result",
    "claimed_entries",
    "consumers",
    "enqueue_error",
    "entry_ms",
    "group_info",
    "is_busy_group",
    "is_missing_group",
    "is_missing_stream",
    "is_out_of_memory",
    "may_have_run",
    "memory_figures",
    "status_of",
    "task_status",
    "unavailable",
]

Fields = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry handed to a consumer, how often Redis has delivered it, and the lane
    (stream) it was read from."""

    entry_id: str
    fields: Fields
    deliveries: int
    lane: Lane = "normal"


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The consumer group's counts (XINFO GROUPS)."""

    pending: int  # entries handed to a consumer and not yet acknowledged
    lag: int | None  # entries never handed out; None where Redis < 7 does not say


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of the group (XINFO CONSUMERS): a worker process, alive or gone."""

    name: str
    pending: int  # entries it holds, delivered and not yet settled
    idle_ms: int  # since it last read or claimed


def as_str(value: bytes | str) -> str:
    """A reply value (an entry id, a consumer name) as text: the client returns bytes."""
    return value.decode() if isinstance(value, bytes) else value


def entry_ms(entry_id: bytes | str) -> int:
    """The milliseconds part of a stream entry id: when the entry was added."""
    return int(as_str(entry_id).partition("-")[0])


def autoclaimed(reply: Any) -> tuple[str, list[tuple[str, Fields]]]:
    """An XAUTOCLAIM reply: (next cursor, claimed entries).

    An entry deleted while pending comes back as nil from Redis 6.2 (redis-py: `(None, None)`)
    and is skipped. Redis 7 adds a third element, the ids of such entries, which it has already
    dropped from the pending list: nothing is left to do with them.
    """
    return as_str(reply[0]), claimed_entries(reply[1])


def claimed_entries(entries: Any) -> list[tuple[str, Fields]]:
    """The entries of an XCLAIM or XAUTOCLAIM reply, without those deleted while pending."""
    return [(as_str(entry_id), fields) for entry_id, fields in entries if entry_id is not None]


def group_info(groups: Sequence[Any], group: str) -> GroupInfo | None:
    """The named group's counts in an XINFO GROUPS reply, or None when it is not there."""
    for info in groups:
        if as_str(info["name"]) == group:
            lag = info.get("lag")
            return GroupInfo(int(info["pending"]), None if lag is None else int(lag))
    return None


def consumers(reply: Sequence[Any]) -> tuple[ConsumerInfo, ...]:
    """An XINFO CONSUMERS reply."""
    return tuple(
        ConsumerInfo(as_str(info["name"]), int(info["pending"]), int(info["idle"]))
        for info in reply
    )


# Redis names the condition in the first word of an error reply; an error raised inside a script
# carries it further in (Redis 6.2: "ERR Error running script ... -NOGROUP ...").
def is_missing_group(exc: ResponseError) -> bool:
    """NOGROUP: the stream or its consumer group does not exist (FLUSHDB, DEL, never made)."""
    return "NOGROUP" in str(exc)


def is_busy_group(exc: ResponseError) -> bool:
    """BUSYGROUP: the consumer group already exists."""
    return "BUSYGROUP" in str(exc)


def is_missing_stream(exc: ResponseError) -> bool:
    """XINFO on a key that does not exist ("ERR no such key")."""
    return "no such key" in str(exc)


def may_have_run(exc: RedisError) -> bool:
    """Whether the command that failed with `exc` may have run on the server all the same.

    No when Redis refused it (an error reply: scripts check before they write), when no
    connection was made (redis-py says "connecting to" then) or Redis refused the connection
    (credentials, still loading). Yes when the command was sent and its reply never came: a
    timeout, or a connection lost on the way.
    """
    if isinstance(exc, ResponseError | AuthenticationError | AuthorizationError | BusyLoadingError):
        return False
    return "connecting to" not in str(exc)


def enqueue_error(queue: str, exc: RedisError) -> EnqueueError:
    """What a failed enqueue command means to the producer's caller: `QueueFull` when Redis is
    at its memory limit, else `QueueUnavailable`."""
    if is_out_of_memory(exc):
        return QueueFull(queue, backlog=None, limit=None)
    reason = f"{type(exc).__name__}: {str(exc).strip()}".rstrip(": ")[:300]
    return QueueUnavailable(queue, reason=reason, maybe_enqueued=may_have_run(exc))


def unavailable(queue: str, exc: RedisError, *, action: str, writes: bool) -> QueueUnavailable:
    """What a failed status read (`writes` False) or cancel (`action` "cancelled") means to
    the producer's caller."""
    reason = f"{type(exc).__name__}: {str(exc).strip()}".rstrip(": ")[:300]
    maybe = writes and may_have_run(exc)
    return QueueUnavailable(queue, reason=reason, maybe_enqueued=maybe, action=action)


def not_replicated(queue: str, acked: int, wanted: int, timeout_ms: int) -> QueueUnavailable:
    """An enqueue written on the primary that fewer than `wanted` replicas confirmed within
    `timeout_ms` (Redis's WAIT): a failover now would lose it, so the caller is told."""
    reason = f"{acked} of {wanted} replicas confirmed the enqueue within {timeout_ms} ms"
    return QueueUnavailable(queue, reason=reason, maybe_enqueued=True)


def is_out_of_memory(exc: BaseException) -> bool:
    """OOM: Redis is at `maxmemory` and refused a command that adds data.

    redis-py raises `OutOfMemoryError` when the reply starts with OOM (a command, or a script on
    Redis 7); Redis 6.2 wraps a refusal inside a script as "ERR Error running script ... -OOM".
    """
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "OOM command not allowed" in str(exc)
    )


_POLICY = "maxmemory_policy"


def memory_figures(info: Any) -> tuple[int | None, int | None, str | None]:
    """(used_memory, maxmemory, maxmemory_policy) from an `INFO memory` reply."""
    used, limit, policy = (info.get(name) for name in ("used_memory", "maxmemory", _POLICY))
    return (
        used if isinstance(used, int) else None,
        limit if isinstance(limit, int) else None,
        as_str(policy) if isinstance(policy, str | bytes) else None,
    )


# The status record's fields (written by the scripts in `scripts`): s state word, at last change
# ms, e stream entry id (queued), due ms (scheduled, retrying), n failed attempts, r a reply or a
# reason, tags space-separated.
_DUE_STATES = frozenset({TaskState.SCHEDULED, TaskState.RETRYING})
_REPLY_STATES = frozenset({TaskState.RETRYING, TaskState.SENT})


def task_status(task_id: str, reply: Any) -> TaskStatus:
    """A TASK_STATUS reply: `{[field, value, ...], 1 if the entry is pending else 0}`."""
    flat = reply[0]
    record = {as_str(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
    return status_of(task_id, record, held=reply[1] == 1)


def status_of(task_id: str, record: Mapping[str, bytes], *, held: bool) -> TaskStatus:
    """The status a record says (`held`: its entry is pending in the group). A missing record,
    or one this version cannot read, is UNKNOWN."""
    try:
        state = TaskState(as_str(record.get("s", b"")))
    except (ValueError, UnicodeDecodeError):
        return TaskStatus(task_id, TaskState.UNKNOWN)
    if state is TaskState.SENDING or state is TaskState.UNKNOWN:  # derived, never written
        return TaskStatus(task_id, TaskState.UNKNOWN)
    if state is TaskState.QUEUED and held:
        state = TaskState.SENDING
    text = _text(record.get("r"))
    return TaskStatus(
        task_id,
        state,
        changed_at=from_ms(_number(record.get("at"))),
        due_at=from_ms(_number(record.get("due"))) if state in _DUE_STATES else None,
        attempts=_number(record.get("n")),
        reply=text if state in _REPLY_STATES else "",
        reason=text if state is TaskState.DEAD else "",
        tags=tuple(_text(record.get("tags")).split()),
    )


def cancel_result(task_id: str, reply: Any) -> CancelResult:
    """A CANCEL reply: `{1 or 0, a state word}`."""
    try:
        was = TaskState(as_str(reply[1]))
    except (ValueError, UnicodeDecodeError):
        was = TaskState.UNKNOWN
    return CancelResult(task_id, cancelled=reply[0] == 1, was=was)


def _number(value: bytes | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value is not None else ""
