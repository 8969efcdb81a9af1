"""The wire format: how a task is stored in a stream entry, and read back.

An entry is a flat map of fields. `v` is the format version and is written first; a worker reads
every version it knows (so a newer worker reads what an older producer wrote) and refuses any
other with a `WireFormatError`, which sends the entry to the dead-letter stream rather than
guessing. Version 1:

    v     b"1"
    id    the task id (32 hex characters), stable across redeliveries and requeues
    at    enqueue time, milliseconds since the epoch (drives Date and latency figures)
    task  the EmailTask as JSON, fields left at their defaults omitted
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import orjson
from pydantic import ValidationError

from .errors import WireFormatError
from .task import EmailTask

__all__ = ["CURRENT_VERSION", "MAX_PAYLOAD_BYTES", "Envelope", "decode_entry", "encode_entry"]

CURRENT_VERSION: Final = b"1"
# Checked before parsing so a huge entry written straight into the stream costs no JSON work.
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024

_TASK_ID = re.compile(rb"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded entry: the task and what the producer recorded about it."""

    task_id: str
    enqueued_at_ms: int
    task: EmailTask


def encode_entry(task: EmailTask, task_id: str, enqueued_at_ms: int) -> dict[str, bytes]:
    """The fields of the stream entry that carries `task`."""
    return {
        "v": CURRENT_VERSION,
        "id": task_id.encode(),
        "at": str(enqueued_at_ms).encode(),
        "task": orjson.dumps(task.model_dump(mode="json", exclude_defaults=True)),
    }


def decode_entry(fields: Mapping[bytes, bytes]) -> Envelope:
    """Read an entry written by any known version; raise `WireFormatError` naming the problem."""
    version = fields.get(b"v")
    if version is None:
        raise WireFormatError("entry has no format version field 'v'")
    decoder = _DECODERS.get(version)
    if decoder is None:
        raise WireFormatError(f"unsupported format version {version[:16]!r}")
    return decoder(fields)


def _decode_v1(fields: Mapping[bytes, bytes]) -> Envelope:
    task_id = _required(fields, b"id")
    if not _TASK_ID.fullmatch(task_id):
        raise WireFormatError(f"field 'id' is not a task id: {task_id[:40]!r}")
    enqueued_at = _required(fields, b"at")
    if not enqueued_at.isdigit() or len(enqueued_at) > 15:
        raise WireFormatError(f"field 'at' is not a timestamp: {enqueued_at[:40]!r}")
    payload = _required(fields, b"task")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireFormatError(f"field 'task' is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    try:
        task = EmailTask.model_validate_json(payload)
    except ValidationError as exc:
        raise WireFormatError(f"field 'task' is not a valid task: {_summarize(exc)}") from None
    return Envelope(task_id=task_id.decode(), enqueued_at_ms=int(enqueued_at), task=task)


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


_DECODERS: Final[dict[bytes, Callable[[Mapping[bytes, bytes]], Envelope]]] = {
    CURRENT_VERSION: _decode_v1,
}
