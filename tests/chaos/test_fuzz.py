"""Whatever bytes are in the stream, the worker dead-letters or delivers: never crashes or hangs.

Property tests (hypothesis) of the two functions every entry goes through, the wire decoder and
task validation (plus rendering, which the worker runs on what validation let through), and one
end-to-end property: a real worker subprocess fed generated entries settles every one of them.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from email.message import EmailMessage

import orjson
import pydantic
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import EmailTask, WireFormatError
from service.store import MAX_ENTRY_FIELDS
from service.store.replies import as_str
from service.wire import QueuedTask, decode_entry, encode_entry
from service.worker.render import render
from tests.conftest import (
    DEAD,
    DELAYED,
    STREAM,
    WorkerProcess,
    as_entries,
    pending_count,
    wait_until,
)
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

# No example database: the tests leave no files behind, and runs stay independent.
FAST = settings(max_examples=300, deadline=None, database=None)

_FIELD_NAMES = (
    b"v", b"id", b"at", b"task", b"due", b"tries", b"rcpt", b"err", b"rq", b"a0", b"a1"
)  # fmt: skip
_TASK_ID = b"0123456789abcdef0123456789abcdef"

# Text that reaches header and address parsing: control characters, encoded words, brackets...
_nasty_text = st.text(
    alphabet=st.sampled_from(list("aZ@.<> \"',:;=?()\\\r\n\t\x00\u2028é\U0001f600-_"))
    | st.characters(codec="utf-8"),
    max_size=40,
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | _nasty_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_nasty_text, inner, max_size=4),
    max_leaves=12,
)
_task_json = st.fixed_dictionaries(
    {},
    optional={
        "to": _nasty_text | st.lists(_nasty_text, max_size=3) | _json_values,
        "cc": st.lists(_nasty_text, max_size=2),
        "sender": _nasty_text,
        "subject": _nasty_text | _json_values,
        "text": _nasty_text | _json_values,
        "html": _nasty_text,
        "headers": st.dictionaries(_nasty_text, _nasty_text | _json_values, max_size=3),
        "attachments": st.lists(
            st.dictionaries(
                st.sampled_from(["filename", "content_type", "content_id", "content"]),
                _nasty_text | _json_values,
                max_size=4,
            ),
            max_size=2,
        )
        | _json_values,
    },
).map(orjson.dumps)


def _valid_fields(task_json: bytes) -> dict[bytes, bytes]:
    # Version 2 reads each attachment's bytes from a0, a1...: here binary of any kind.
    version = b"2" if b'"attachments"' in task_json else b"1"
    fields = {b"v": version, b"id": _TASK_ID, b"at": b"1700000000000", b"task": task_json}
    return {**fields, b"a0": b"\x00\xff" * 3, b"a1": b""}


_plain = st.from_regex(r"[A-Za-z0-9 .,!]{0,30}", fullmatch=True)
# Entries a producer could have written (sendable), with the optional fields set to anything.
_good_entries = st.builds(
    lambda n, subject, text, extra: {
        **{
            k.encode(): v
            for k, v in encode_entry(
                EmailTask(to=f"user{n}@example.com", subject=subject, text=text),
                _TASK_ID.decode(),
                1_700_000_000_000,
            ).items()
        },
        **extra,
    },
    st.integers(0, 999),
    _plain,
    _plain,
    st.dictionaries(
        st.sampled_from((b"due", b"tries", b"rcpt", b"err", b"rq")),
        st.binary(max_size=20) | st.from_regex(rb"[0-9]{1,3}", fullmatch=True),
        max_size=2,
    ),
)
# Sendable entries, mostly-right ones (so the fuzzing reaches past the first check) and
# anything at all.
_entries = st.one_of(
    _good_entries,
    st.builds(
        lambda task, changes, dropped: {
            **{k: v for k, v in _valid_fields(task).items() if k not in dropped},
            **changes,
        },
        _task_json,
        st.dictionaries(st.sampled_from(_FIELD_NAMES), st.binary(max_size=60), max_size=3),
        st.sets(st.sampled_from(_FIELD_NAMES), max_size=2),
    ),
    st.dictionaries(
        st.sampled_from(_FIELD_NAMES) | st.binary(min_size=1, max_size=8),
        st.binary(max_size=200),
        min_size=1,
        max_size=8,
    ),
)
# Hostile shapes no producer writes, on top of any of those: thousands of fields (Lua's unpack()
# stops near 8,000 values, so a script that copies such an entry fails), or binary names and
# large binary values.
_many_fields = st.builds(
    lambda count, prefix, value: {prefix + b"%d" % n: value for n in range(count)},
    st.integers(0, 6_000),
    st.binary(min_size=1, max_size=12),
    st.binary(max_size=16),
)
_large_value = st.builds(
    lambda repeat, unit: unit * repeat, st.integers(0, 100_000), st.binary(min_size=1, max_size=3)
)
_odd_fields = st.dictionaries(
    st.binary(min_size=1, max_size=40), st.binary(max_size=64) | _large_value, max_size=3
)
_hostile_entries = st.builds(
    lambda entry, extra: {**entry, **extra}, _entries, st.one_of(_many_fields, _odd_fields)
)
_any_entries = st.one_of(_entries, _hostile_entries)


@FAST
@given(_any_entries)
def test_the_decoder_returns_a_queued_task_or_raises_wire_format_error(
    fields: dict[bytes, bytes],
) -> None:
    try:
        queued = decode_entry(fields)
    except WireFormatError:
        return
    assert isinstance(queued, QueuedTask)
    # What decodes is something the worker can render, or refuses with ValueError (it then
    # dead-letters it); nothing else may escape.
    _render_or_value_error(queued)


@FAST
@given(
    to=_nasty_text | st.lists(_nasty_text, max_size=3),
    subject=_nasty_text,
    text=_nasty_text,
    headers=st.dictionaries(_nasty_text, _nasty_text, max_size=3),
    sender=st.none() | _nasty_text,
)
def test_task_validation_raises_only_validation_error(
    to: str | list[str], subject: str, text: str, headers: dict[str, str], sender: str | None
) -> None:
    try:
        task = EmailTask(to=to, subject=subject, text=text, headers=headers, sender=sender)
    except pydantic.ValidationError:
        return
    fields = {k.encode(): v for k, v in encode_entry(task, _TASK_ID.decode(), 1).items()}
    queued = decode_entry(fields)  # a task that validates survives the wire unchanged
    assert queued.task == task
    _render_or_value_error(queued)


def _render_or_value_error(queued: QueuedTask) -> None:
    try:
        outgoing = render(queued, default_sender="Worker <worker@example.com>")
    except ValueError:
        return
    assert isinstance(outgoing.message, EmailMessage)
    outgoing.message.as_bytes()  # what aiosmtplib will do with it


@settings(
    max_examples=3,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(_any_entries, min_size=30, max_size=40))
def test_a_worker_settles_every_entry_whatever_its_bytes(
    batch: list[dict[bytes, bytes]],
    db: redis_sync.Redis,
    smtp: SmtpServer,
    start_worker: StartWorker,
) -> None:
    # One worker serves every example: it must survive them all.
    worker = _the_worker(start_worker)
    db.delete(DEAD)
    with smtp.lock:
        smtp.received.clear()
    # Entries that carry the well-formed task id get one of their own, to be told apart.
    batch = [
        {**fields, b"id": uuid.uuid4().hex.encode()} if fields.get(b"id") == _TASK_ID else fields
        for fields in batch
    ]
    ids = [as_str(db.xadd(STREAM, fields)) for fields in batch]  # type: ignore[arg-type]
    wait_until(lambda: db.xlen(STREAM) == 0 and pending_count(db) == 0, 30, "every entry settled")
    time.sleep(0.1)  # the SMTP server records a message just before it replies 250
    assert worker.process.poll() is None, worker.output()[-3000:]
    assert db.zcard(DELAYED) == 0
    # Every entry ends in exactly one place, and its log line says which.
    dead = Counter(f[b"dead_entry_id"].decode() for _, f in as_entries(db.xrange(DEAD)))
    delivered = Counter(smtp.task_ids())
    # Each outcome is logged just after its settle: wait for the last lines.
    wait_until(lambda: set(ids) <= set(_outcomes(worker)), 10, "every outcome logged")
    logged = _outcomes(worker)
    for entry_id, fields in zip(ids, batch, strict=True):
        about = (entry_id, len(fields), sorted(fields)[:10], logged.get(entry_id))
        if _sendable(fields):
            assert (delivered[fields[b"id"].decode()], dead[entry_id]) == (1, 0), about
            assert logged.get(entry_id) == ["sent"], about
        else:
            assert dead[entry_id] == 1, about
            assert logged.get(entry_id) == ["dead_letter"], about


def _sendable(fields: dict[bytes, bytes]) -> bool:
    """What the worker sends: an entry of sane shape that decodes and renders."""
    if len(fields) > MAX_ENTRY_FIELDS:
        return False
    try:
        return render(decode_entry(fields), default_sender="w@example.com") is not None
    except ValueError:  # WireFormatError is one
        return False


def _outcomes(worker: WorkerProcess) -> dict[str, list[str]]:
    """The outcomes the worker logged, by entry id."""
    outcomes: dict[str, list[str]] = {}
    complete = worker.output().rpartition("\n")[0]  # the last line may be half written
    for line in complete.splitlines():
        if '"outcome"' in line:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                # A read racing the worker's write (seen once on a loaded machine); a line that
                # stays broken leaves its entry without an outcome, and the test fails on that.
                continue
            outcomes.setdefault(event["entry_id"], []).append(event["outcome"])
    return outcomes


_WORKERS: dict[int, WorkerProcess] = {}


def _the_worker(start_worker: StartWorker) -> WorkerProcess:
    key = id(start_worker)
    if key not in _WORKERS:
        _WORKERS.clear()
        _WORKERS[key] = start_worker()
    return _WORKERS[key]
