"""The wire format: round trips, and every malformed entry refused with a reason."""

from __future__ import annotations

import re

import orjson
import pytest

from service import Attachment, EmailTask, WireFormatError
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


# An entry as the release before attachments wrote it, byte for byte: it must still decode.
OLD_ENTRY = {
    b"v": b"1",
    b"id": TASK_ID.encode(),
    b"at": b"1700000000000",
    b"task": b'{"to":["A <a@example.com>"],"subject":"H\xc3\xa9","text":"body","tags":["w"]}',
    b"due": b"1700000360000",
}


def test_an_entry_of_the_previous_format_still_decodes() -> None:
    queued = decode_entry(OLD_ENTRY)
    assert queued.task == EmailTask(to="A <a@example.com>", subject="Hé", text="body", tags=["w"])
    assert (queued.due_ms, queued.task.attachments) == (1_700_000_360_000, [])


def test_a_task_without_attachments_is_written_in_the_previous_format() -> None:
    # A worker of the previous release, still running during a deploy, reads it.
    assert encode_entry(TASK, TASK_ID, 0)["v"] == b"1"


WITH_FILES = TASK.model_copy(
    update={
        "html": '<img src="cid:logo@x">',
        "attachments": [
            Attachment(filename="a.bin", content=bytes(range(256))),
            Attachment(
                filename="logo.png", content=b"", content_type="image/png", content_id="logo@x"
            ),
        ],
    }
)


def test_attachments_travel_as_raw_bytes_in_fields_of_their_own() -> None:
    fields = encode_entry(WITH_FILES, TASK_ID, 0)
    assert fields["v"] == b"2"
    assert (fields["a0"], fields["a1"]) == (bytes(range(256)), b"")
    assert b'"content":' not in fields["task"]  # no base64 copy in the JSON
    assert orjson.loads(fields["task"])["attachments"][1] == {
        "filename": "logo.png",
        "content_type": "image/png",
        "content_id": "logo@x",
    }
    queued = decode_entry({k.encode(): v for k, v in fields.items()})
    assert queued.task == WITH_FILES


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"a1": None}, "entry has no field 'a1'"),
        ({b"task": b"[1]"}, "field 'task' has no list of attachments"),
        ({b"task": b"{"}, "field 'task' is not JSON"),
        ({b"a0": b"x" * (MAX_PAYLOAD_BYTES + 1)}, "attachments exceed"),
    ],
)
def test_a_broken_entry_with_attachments_is_refused(
    change: dict[bytes, bytes | None], reason: str
) -> None:
    fields = {k.encode(): v for k, v in encode_entry(WITH_FILES, TASK_ID, 0).items()}
    for name, value in change.items():
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    with pytest.raises(WireFormatError, match=re.escape(reason)):
        decode_entry(fields)
