"""The wire format: round trips, and every malformed entry refused with a reason."""

from __future__ import annotations

import orjson
import pytest

from service import EmailTask, WireFormatError
from service.wire import MAX_PAYLOAD_BYTES, decode_entry, encode_entry

TASK = EmailTask(
    to=["A <a@example.com>"],
    cc="c@example.com",
    bcc="b@example.com",
    reply_to="r@example.com",
    subject="Hé",
    text="body",
    html="<p>body</p>",
    headers={"X-Tag": "1"},
)
TASK_ID = "0123456789abcdef0123456789abcdef"


def _fields(**changes: bytes | None) -> dict[bytes, bytes]:
    fields = {k.encode(): v for k, v in encode_entry(TASK, TASK_ID, 1_700_000_000_000).items()}
    for name, value in changes.items():
        if value is None:
            fields.pop(name.encode(), None)
        else:
            fields[name.encode()] = value
    return fields


def test_round_trip_keeps_every_field() -> None:
    envelope = decode_entry(_fields())
    assert envelope.task == TASK
    assert envelope.task_id == TASK_ID
    assert envelope.enqueued_at_ms == 1_700_000_000_000


def test_version_1_layout_is_stable() -> None:
    # What older producers wrote must stay readable: pin the exact v1 layout.
    fields = {
        b"v": b"1",
        b"id": TASK_ID.encode(),
        b"at": b"5",
        b"task": b'{"to":["a@example.com"],"subject":"s","text":"t"}',
    }
    envelope = decode_entry(fields)
    assert envelope.task == EmailTask(to="a@example.com", subject="s", text="t")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"v": None}, "no format version"),
        ({"v": b"99"}, "unsupported format version b'99'"),
        ({"id": None}, "no field 'id'"),
        ({"id": b"../etc/passwd"}, "field 'id' is not a task id"),
        ({"at": b"yesterday"}, "field 'at' is not a timestamp"),
        ({"at": b"-1"}, "field 'at' is not a timestamp"),
        ({"task": None}, "no field 'task'"),
        ({"task": b"\xff\xfe not json"}, "field 'task' is not a valid task"),
        ({"task": b"[]"}, "field 'task' is not a valid task"),
        ({"task": b'{"to":"bad","subject":"s","text":"t"}'}, "to.0: Value error"),
        ({"task": b'{"to":"a@example.com","subject":"s\\r\\nX: y","text":"t"}'}, "subject"),
        ({"task": b" " * (MAX_PAYLOAD_BYTES + 1)}, "bytes; at most"),
    ],
)
def test_malformed_entries_are_refused_with_a_reason(
    changes: dict[str, bytes | None], reason: str
) -> None:
    with pytest.raises(WireFormatError) as caught:
        decode_entry(_fields(**changes))
    assert reason in caught.value.reason


def test_errors_do_not_echo_bodies() -> None:
    payload = orjson.dumps({"to": "a@example.com", "subject": "s", "text": 5, "html": "SECRET"})
    with pytest.raises(WireFormatError) as caught:
        decode_entry(_fields(task=payload))
    assert "SECRET" not in str(caught.value)
