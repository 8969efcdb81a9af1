"""The wire format: how a task is stored in a stream entry, and read back.

An entry is a flat map of fields. `v` is the format version and is written first; a worker reads
every version it knows (so a newer worker reads what an older producer wrote) and refuses any
other with a `WireFormatError`, which sends the entry to the dead-letter stream rather than
guessing. Version 1:

    v     b"1"
    id    the task id (32 hex characters), stable across redeliveries and requeues
    at    enqueue time, milliseconds since the epoch (drives Date and latency figures)
    task  the EmailTask as JSON, fields left at their defaults omitted

and, only where they apply:

    due   when a scheduled send was due, milliseconds since the epoch (drives Date instead of `at`)
    tries failed delivery attempts so far (a retry copy), counted against WORKER_MAX_ATTEMPTS
    rcpt  the envelope recipients still to deliver, as a JSON list (a retry after some
          recipients were accepted); absent means every recipient of the task
    err   why the last attempt failed (for people reading the entry; the worker ignores it)
    rq    how often an operator requeued the task from the dead letters
    lane  the task's lane, `high` or `low` (absent: normal); the scripts put the entry, its retry
          copies and its requeues into that lane's stream

Version 2 is version 1 plus attachments, and is written only for a task that has some (so a
worker of an earlier release, still running during a deploy, reads every other task). The
`task` JSON lists each attachment without its content; the bytes follow as they are, one field
per attachment, `a0`, `a1`... in the order of the list: no base64 (nor JSON escaping) in Redis.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from pydantic import ValidationError

from .errors import WireFormatError
from .task import EmailTask

__all__ = [
    "CURRENT_VERSION",
    "MAX_PAYLOAD_BYTES",
    "QueuedTask",
    "dead_entry",
    "decode_entry",
    "encode_entry",
    "retry_entry",
]

CURRENT_VERSION: Final = b"2"
_WITHOUT_ATTACHMENTS: Final = b"1"
# Checked before parsing so a huge entry written straight into the stream costs no JSON work.
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024

_TASK_ID = re.compile(rb"[0-9a-f]{32}")
_COUNT = re.compile(rb"[0-9]{1,6}")
_TIMESTAMP = re.compile(rb"[0-9]{1,15}")


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A task as it sits in the queue: a decoded stream entry, with what the producer and the
    earlier attempts recorded about it."""

    task_id: str
    enqueued_at_ms: int
    task: EmailTask
    due_ms: int | None = None
    tries: int = 0
    # None: every recipient of the task; otherwise the ones a retry still has to reach.
    recipients: tuple[str, ...] | None = None
    requeues: int = 0

    @property
    def dated_ms(self) -> int:
        """The moment the email is dated: when it was due, or else when it was enqueued."""
        return self.due_ms if self.due_ms is not None else self.enqueued_at_ms

    def envelope_recipients(self) -> list[str]:
        """The addresses this delivery sends to."""
        return list(self.recipients) if self.recipients is not None else self.task.recipients()


def encode_entry(
    task: EmailTask, task_id: str, enqueued_at_ms: int, *, due_ms: int | None = None
) -> dict[str, bytes]:
    """The fields of the stream entry that carries `task`."""
    if not task.attachments:
        payload = task.model_dump(mode="json", exclude_defaults=True)
    else:
        payload = task.model_dump(
            mode="json",
            exclude_defaults=True,
            exclude={"attachments": {"__all__": {"content"}}},
        )
    fields = {
        "v": CURRENT_VERSION if task.attachments else _WITHOUT_ATTACHMENTS,
        "id": task_id.encode(),
        "at": str(enqueued_at_ms).encode(),
        "task": orjson.dumps(payload),
    }
    if due_ms is not None:
        fields["due"] = str(due_ms).encode()
    if task.priority != "normal":
        fields["lane"] = task.priority.encode()
    for index, attachment in enumerate(task.attachments):
        fields[f"a{index}"] = attachment.content
    return fields


def retry_entry(
    fields: Mapping[bytes, bytes], *, tries: int, recipients: Sequence[str], error: str
) -> dict[bytes, bytes]:
    """The fields of the copy of an entry that a retry sends later to `recipients`."""
    copy = dict(fields)
    copy[b"tries"] = str(tries).encode()
    copy[b"rcpt"] = orjson.dumps(list(recipients))
    copy[b"err"] = error.encode()
    return copy


def dead_entry(
    fields: Mapping[bytes, bytes],
    *,
    reason: str,
    entry_id: str,
    deliveries: int,
    tries: int,
    consumer: str,
    recipients: Sequence[str] | None = None,
    dead_at_ms: int | None = None,
) -> dict[bytes, bytes]:
    """The dead-letter record of an entry: its fields as they were, plus why, when and where.

    `recipients` narrows the record to the recipients given up on (the others were sent to or
    are still being retried), so requeueing it sends to them only. `dead_at_ms` defaults to
    now.
    """
    if dead_at_ms is None:
        dead_at_ms = time.time_ns() // 1_000_000
    record = dict(fields)
    if recipients is not None:
        record[b"rcpt"] = orjson.dumps(list(recipients))
    record.update(
        {
            b"dead_reason": reason.encode(),
            b"dead_at": str(dead_at_ms).encode(),
            b"dead_entry_id": entry_id.encode(),
            b"dead_deliveries": str(deliveries).encode(),
            b"dead_attempts": str(tries).encode(),
            b"dead_consumer": consumer.encode(),
        }
    )
    return record


def decode_entry(fields: Mapping[bytes, bytes]) -> QueuedTask:
    """Read an entry written by any known version; raise `WireFormatError` naming the problem."""
    version = fields.get(b"v")
    if version is None:
        raise WireFormatError("entry has no format version field 'v'")
    decoder = _DECODERS.get(version)
    if decoder is None:
        raise WireFormatError(f"unsupported format version {version[:16]!r}")
    return decoder(fields)


def _decode_v1(fields: Mapping[bytes, bytes]) -> QueuedTask:
    return _decode(fields, attachments=False)


def _decode_v2(fields: Mapping[bytes, bytes]) -> QueuedTask:
    return _decode(fields, attachments=True)


def _decode(fields: Mapping[bytes, bytes], *, attachments: bool) -> QueuedTask:
    task_id = _required(fields, b"id")
    if not _TASK_ID.fullmatch(task_id):
        raise WireFormatError(f"field 'id' is not a task id: {task_id[:40]!r}")
    enqueued_at = _number(fields, b"at", _TIMESTAMP, required=True)
    payload = _required(fields, b"task")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireFormatError(f"field 'task' is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    try:
        if attachments:
            task = EmailTask.model_validate(_with_attachments(payload, fields))
        else:
            task = EmailTask.model_validate_json(payload)
    except ValidationError as exc:
        raise WireFormatError(f"field 'task' is not a valid task: {_summarize(exc)}") from None
    return QueuedTask(
        task_id=task_id.decode(),
        enqueued_at_ms=enqueued_at or 0,
        task=task,
        due_ms=_number(fields, b"due", _TIMESTAMP),
        tries=_number(fields, b"tries", _COUNT) or 0,
        recipients=_recipients(fields, task),
        requeues=_number(fields, b"rq", _COUNT) or 0,
    )


def _with_attachments(payload: bytes, fields: Mapping[bytes, bytes]) -> object:
    """The task's JSON with each attachment's bytes put back from its own field."""
    try:
        task = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise WireFormatError("field 'task' is not JSON") from None
    listed = task.get("attachments") if isinstance(task, dict) else None
    if not isinstance(listed, list) or not all(isinstance(a, dict) for a in listed):
        raise WireFormatError("field 'task' has no list of attachments")
    total = 0
    for index, attachment in enumerate(listed):
        content = _required(fields, f"a{index}".encode())
        total += len(content)
        if total > MAX_PAYLOAD_BYTES:
            raise WireFormatError(f"attachments exceed {MAX_PAYLOAD_BYTES} bytes")
        attachment["content"] = content
    return task


def _number(
    fields: Mapping[bytes, bytes], name: bytes, shape: re.Pattern[bytes], *, required: bool = False
) -> int | None:
    value = _required(fields, name) if required else fields.get(name)
    if value is None:
        return None
    if not shape.fullmatch(value):
        raise WireFormatError(f"field {name.decode()!r} is not a number: {value[:40]!r}")
    return int(value)


def _recipients(fields: Mapping[bytes, bytes], task: EmailTask) -> tuple[str, ...] | None:
    """The `rcpt` field, which may only narrow the task's own recipients."""
    raw = fields.get(b"rcpt")
    if raw is None:
        return None
    try:
        recipients = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise WireFormatError("field 'rcpt' is not JSON") from None
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(address, str) for address in recipients)
    ):
        raise WireFormatError("field 'rcpt' is not a non-empty list of addresses")
    unknown = set(recipients).difference(task.recipients())
    if unknown:
        raise WireFormatError(f"field 'rcpt' names {len(unknown)} address(es) not in the task")
    return tuple(recipients)


def _required(fields: Mapping[bytes, bytes], name: bytes) -> bytes:
    value = fields.get(name)
    if value is None:
        raise WireFormatError(f"entry has no field {name.decode()!r}")
    return value


def _summarize(exc: ValidationError) -> str:
    """Name the failing fields without echoing their values (they may be message content)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "task"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


_DECODERS: Final[dict[bytes, Callable[[Mapping[bytes, bytes]], QueuedTask]]] = {
    _WITHOUT_ATTACHMENTS: _decode_v1,
    CURRENT_VERSION: _decode_v2,
}
