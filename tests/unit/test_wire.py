"""The wire format: round trips, and every malformed entry refused with a reason."""

from __future__ import annotations

import orjson
import pytest

from service import EmailTask, WireFormatError
from service.wire import MAX_PAYLOAD_BYTES, dead_entry, decode_entry, encode_entry, retry_entry

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
    assert (envelope.due_ms, envelope.tries, envelope.recipients, envelope.requeues) == (
        None,
        0,
        None,
        0,
    )
    assert envelope.dated_ms == 1_700_000_000_000
    assert envelope.envelope_recipients() == ["a@example.com", "c@example.com", "b@example.com"]


def test_scheduled_entry_is_dated_when_due() -> None:
    fields = encode_entry(TASK, TASK_ID, 1_700_000_000_000, due_ms=1_700_000_360_000)
    envelope = decode_entry({k.encode(): v for k, v in fields.items()})
    assert envelope.due_ms == 1_700_000_360_000
    assert envelope.dated_ms == 1_700_000_360_000


def test_retry_copy_narrows_recipients_and_counts_tries() -> None:
    copy = retry_entry(_fields(), tries=3, recipients=["b@example.com"], error="450 busy")
    envelope = decode_entry(copy)
    assert envelope.task == TASK
    assert envelope.task_id == TASK_ID
    assert envelope.tries == 3
    assert envelope.envelope_recipients() == ["b@example.com"]
    assert copy[b"err"] == b"450 busy"


def test_dead_record_keeps_the_entry_and_says_why() -> None:
    record = dead_entry(
        _fields(),
        reason="SMTP 550 no such user",
        entry_id="1-0",
        deliveries=2,
        tries=4,
        consumer="w1",
        recipients=["c@example.com"],
    )
    assert decode_entry(record).envelope_recipients() == ["c@example.com"]
    assert record[b"dead_reason"] == b"SMTP 550 no such user"
    assert (record[b"dead_entry_id"], record[b"dead_deliveries"]) == (b"1-0", b"2")
    assert (record[b"dead_attempts"], record[b"dead_consumer"]) == (b"4", b"w1")
    assert record[b"dead_at"].isdigit()


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
        ({"at": b"yesterday"}, "field 'at' is not a number"),
        ({"at": b"-1"}, "field 'at' is not a number"),
        ({"due": b"soon"}, "field 'due' is not a number"),
        ({"tries": b"-2"}, "field 'tries' is not a number"),
        ({"tries": b"1234567"}, "field 'tries' is not a number"),
        ({"rq": b"x"}, "field 'rq' is not a number"),
        ({"rcpt": b"a@example.com"}, "field 'rcpt' is not JSON"),
        ({"rcpt": b"[]"}, "field 'rcpt' is not a non-empty list"),
        ({"rcpt": b'"a@example.com"'}, "field 'rcpt' is not a non-empty list"),
        ({"rcpt": b"[1]"}, "field 'rcpt' is not a non-empty list"),
        # A retry may only narrow the task's recipients, never add one.
        ({"rcpt": b'["a@example.com", "evil@example.net"]'}, "1 address(es) not in the task"),
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
