"""The status ledger's pure parts, as tables: a status record read back, a cancel's reply, and
the status's JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from service.status import CancelResult, TaskState, TaskStatus, is_task_id
from service.store import replies

T = "0123456789abcdef0123456789abcdef"
AT = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
AT_MS = b"1796169600000"
DUE = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
DUE_MS = b"1796173200000"


@pytest.mark.parametrize(
    ("record", "held", "expected"),
    [
        # No record: never seen, or expired.
        ({}, False, TaskStatus(T, TaskState.UNKNOWN)),
        # Queued, and the same record once a worker holds its entry.
        (
            {"s": b"queued", "at": AT_MS, "e": b"1-0", "tags": b"welcome user:42"},
            False,
            TaskStatus(T, TaskState.QUEUED, changed_at=AT, tags=("welcome", "user:42")),
        ),
        (
            {"s": b"queued", "at": AT_MS, "e": b"1-0", "n": b"2"},
            True,
            TaskStatus(T, TaskState.SENDING, changed_at=AT, attempts=2),
        ),
        # Scheduled: its due time; a stale reply is not shown.
        (
            {"s": b"scheduled", "at": AT_MS, "due": DUE_MS, "r": b"old"},
            False,
            TaskStatus(T, TaskState.SCHEDULED, changed_at=AT, due_at=DUE),
        ),
        (
            {"s": b"retrying", "at": AT_MS, "due": DUE_MS, "n": b"3", "r": b"SMTP 451 later"},
            False,
            TaskStatus(
                T, TaskState.RETRYING, changed_at=AT, due_at=DUE, attempts=3, reply="SMTP 451 later"
            ),
        ),
        # Sent after a retry: the due time and entry left over are not shown.
        (
            {"s": b"sent", "at": AT_MS, "due": DUE_MS, "e": b"1-0", "n": b"1", "r": b"250 ok"},
            True,
            TaskStatus(T, TaskState.SENT, changed_at=AT, attempts=1, reply="250 ok"),
        ),
        (
            {"s": b"dead", "at": AT_MS, "n": b"25", "r": b"SMTP 550 no such user"},
            False,
            TaskStatus(
                T, TaskState.DEAD, changed_at=AT, attempts=25, reason="SMTP 550 no such user"
            ),
        ),
        ({"s": b"cancelled", "at": AT_MS}, False, TaskStatus(T, TaskState.CANCELLED, AT)),
        # What no script writes reads as unknown: a derived or unknown state word, bad bytes.
        ({"s": b"sending"}, True, TaskStatus(T, TaskState.UNKNOWN)),
        ({"s": b"unknown"}, False, TaskStatus(T, TaskState.UNKNOWN)),
        ({"s": b"paused"}, False, TaskStatus(T, TaskState.UNKNOWN)),
        ({"s": b"\xff"}, False, TaskStatus(T, TaskState.UNKNOWN)),
        # A number that is not one is left out rather than failing the read.
        (
            {"s": b"sent", "at": b"soon", "n": b"-1"},
            False,
            TaskStatus(T, TaskState.SENT),
        ),
    ],
)
def test_status_of(record: dict[str, bytes], held: bool, expected: TaskStatus) -> None:
    assert replies.status_of(T, record, held=held) == expected


def test_task_status_reads_the_script_s_flat_reply() -> None:
    reply = [[b"s", b"queued", b"e", b"1-0", b"tags", b""], 1]
    assert replies.task_status(T, reply) == TaskStatus(T, TaskState.SENDING)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([1, b"scheduled"], CancelResult(T, cancelled=True, was=TaskState.SCHEDULED)),
        ([1, b"queued"], CancelResult(T, cancelled=True, was=TaskState.QUEUED)),
        ([0, b"sending"], CancelResult(T, cancelled=False, was=TaskState.SENDING)),
        ([0, b"sent"], CancelResult(T, cancelled=False, was=TaskState.SENT)),
        ([0, b"what"], CancelResult(T, cancelled=False, was=TaskState.UNKNOWN)),
    ],
)
def test_cancel_result(reply: list[Any], expected: CancelResult) -> None:
    assert replies.cancel_result(T, reply) == expected


def test_status_json_leaves_out_what_does_not_apply() -> None:
    status = TaskStatus(T, TaskState.RETRYING, AT, DUE, attempts=0, reply="SMTP 451")
    assert status.to_json() == {
        "task_id": T,
        "state": "retrying",
        "changed_at": "2026-12-02T00:00:00+00:00",
        "due_at": "2026-12-02T01:00:00+00:00",
        "attempts": 0,
        "reply": "SMTP 451",
        "tags": [],
    }
    assert TaskStatus(T, TaskState.UNKNOWN).to_json() == {
        "task_id": T,
        "state": "unknown",
        "tags": [],
    }


@pytest.mark.parametrize(
    ("text", "ok"),
    [(T, True), (T.upper(), False), (T[:-1], False), (T + "0", False), ("{emails}:x", False)],
)
def test_is_task_id(text: str, ok: bool) -> None:
    assert is_task_id(text) is ok
