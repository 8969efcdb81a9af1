"""The fate planner: what one delivery writes to Redis and says about it, as a table."""

from __future__ import annotations

import orjson
import pytest

from service import EmailTask
from service.store import Entry, RetryCopy, SettleWrite, StatusNote
from service.wire import QueuedTask, decode_entry, encode_entry
from service.worker.fate import Fate, RetryPolicy, after_attempt, already_sent, give_up, hold
from service.worker.outcome import Decision

A, B = "a@example.com", "b@example.com"
TASK_ID = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000_000
POLICY = RetryPolicy(max_attempts=5, first_delay_s=60.0, max_delay_s=3600.0)
FIELDS = {
    k.encode(): v
    for k, v in encode_entry(EmailTask(to=[A, B], subject="s", text="x"), TASK_ID, NOW).items()
}
ENTRY = Entry("1-0", FIELDS, deliveries=2)
SENT = StatusNote("sent")
QUEUED = decode_entry(FIELDS)


def _plan(decision: Decision, jitter: float = 1.0) -> Fate:
    return after_attempt(
        ENTRY, QUEUED, decision, policy=POLICY, consumer="w1", now_ms=NOW, jitter=jitter
    )


def _retry(due_in_ms: int, recipients: list[str], tries: int, error: str) -> RetryCopy:
    copy = {
        **FIELDS,
        b"tries": str(tries).encode(),
        b"rcpt": orjson.dumps(recipients),
        b"err": error.encode(),
    }
    return RetryCopy(NOW + due_in_ms, copy)


def _dead(reason: str, tries: int, recipients: list[str] | None) -> dict[bytes, bytes]:
    record = dict(FIELDS)
    if recipients is not None:
        record[b"rcpt"] = orjson.dumps(recipients)
    record.update(
        {
            b"dead_reason": reason.encode(),
            b"dead_at": str(NOW).encode(),
            b"dead_entry_id": b"1-0",
            b"dead_deliveries": b"2",
            b"dead_attempts": str(tries).encode(),
            b"dead_consumer": b"w1",
        }
    )
    return record


@pytest.mark.parametrize(
    ("decision", "jitter", "expected"),
    [
        # Sent to everyone: acknowledge, and leave a sent record should another copy exist.
        (
            Decision(accepted=2),
            1.0,
            Fate(SettleWrite("1-0", TASK_ID, sent_record=True, status=SENT), "sent"),
        ),
        # The server's reply to the message goes into the status and the log line.
        (
            Decision(accepted=2, answer="SMTP 250 2.0.0 Ok: queued as 4Zx"),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    sent_record=True,
                    status=StatusNote("sent", 0, "SMTP 250 2.0.0 Ok: queued as 4Zx"),
                ),
                "sent",
                answer="SMTP 250 2.0.0 Ok: queued as 4Zx",
            ),
        ),
        # A transient failure, second attempt: retried after the backoff (120 s at the top).
        (
            Decision(accepted=0, retry=(A, B), tries=2, reason="SMTP 451"),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    retry=_retry(120_000, [A, B], 2, "SMTP 451"),
                    status=StatusNote("retrying", 2, "SMTP 451"),
                ),
                "retry",
                reason="SMTP 451",
                retry_recipients=2,
                retry_in_s=120.0,
                counted_retry=True,
            ),
        ),
        # The jitter picks within the upper half of the backoff: never less than half of it.
        (
            Decision(accepted=0, retry=(A, B), tries=1, reason="SMTP 451"),
            0.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    retry=_retry(30_000, [A, B], 1, "SMTP 451"),
                    status=StatusNote("retrying", 1, "SMTP 451"),
                ),
                "retry",
                reason="SMTP 451",
                retry_recipients=2,
                retry_in_s=30.0,
                counted_retry=True,
            ),
        ),
        # Paused (SMTP unusable): requeued at once, no attempt used.
        (
            Decision(accepted=0, retry=(A, B), tries=0, reason="down", paused=True),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    retry=_retry(0, [A, B], 0, "down"),
                    status=StatusNote("retrying", 0, "down"),
                ),
                "requeued",
                reason="down",
                retry_recipients=2,
            ),
        ),
        # The server asked to slow down: requeued at once (the shared limiter, slowed down,
        # paces it), no attempt used, even on the last one.
        (
            Decision(accepted=0, retry=(A, B), tries=4, reason="SMTP 454", throttled=True),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    retry=_retry(0, [A, B], 4, "SMTP 454"),
                    status=StatusNote("retrying", 4, "SMTP 454"),
                ),
                "throttled",
                reason="SMTP 454",
                retry_recipients=2,
            ),
        ),
        # One accepted, one asked to slow down: that one requeued without an attempt.
        (
            Decision(accepted=1, retry=(B,), tries=1, reason="SMTP 452", throttled=True),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    retry=_retry(0, [B], 1, "SMTP 452"),
                    status=StatusNote("retrying", 1, "SMTP 452"),
                ),
                "partly_sent",
                reason="SMTP 452",
                retry_recipients=1,
            ),
        ),
        # One accepted, one refused for good: the dead letter names only that one; nothing is
        # left to retry, so the task is finished (sent record).
        (
            Decision(accepted=1, tries=1, dead=(B,), reason="r", dead_reason="SMTP 550"),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    sent_record=True,
                    dead=_dead("SMTP 550", 1, [B]),
                    status=SENT,  # the refused recipient is in the dead letters
                ),
                "partly_sent",
                reason="r",
                dead_recipients=1,
            ),
        ),
        # Everyone refused for good: the record is the whole task's (no narrowing `rcpt`).
        (
            Decision(accepted=0, tries=1, dead=(A, B), reason="r", dead_reason="SMTP 554"),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    dead=_dead("SMTP 554", 1, None),
                    status=StatusNote("dead", 1, "SMTP 554"),
                ),
                "dead_letter",
                reason="r",
                dead_recipients=2,
            ),
        ),
        # One accepted, one to retry: not finished, so no sent record.
        (
            Decision(accepted=1, retry=(B,), tries=1, reason="SMTP 450"),
            1.0,
            Fate(
                SettleWrite(
                    "1-0",
                    TASK_ID,
                    retry=_retry(60_000, [B], 1, "SMTP 450"),
                    status=StatusNote("retrying", 1, "SMTP 450"),
                ),
                "partly_sent",
                reason="SMTP 450",
                retry_recipients=1,
                retry_in_s=60.0,
                counted_retry=True,
            ),
        ),
    ],
)
def test_after_attempt(decision: Decision, jitter: float, expected: Fate) -> None:
    assert _plan(decision, jitter) == expected


@pytest.mark.parametrize(
    ("queued", "task_id", "tries"),
    [
        (None, "", 0),  # undecodable: not a task at all
        (QUEUED, TASK_ID, 0),
        (QueuedTask(TASK_ID, NOW, QUEUED.task, tries=3), TASK_ID, 3),
    ],
)
def test_give_up_dead_letters_the_whole_entry(
    queued: QueuedTask | None, task_id: str, tries: int
) -> None:
    planned = give_up(ENTRY, queued, "handed out 6 times", consumer="w1", now_ms=NOW)
    dead = _dead("handed out 6 times", tries, None)
    note = StatusNote("dead", tries, "handed out 6 times")  # noted only for a task id
    assert planned == Fate(
        SettleWrite("1-0", task_id, dead=dead, status=note), "dead_letter", "handed out 6 times"
    )


def test_already_sent_only_acknowledges() -> None:
    note = StatusNote("sent_copy")  # says sent, keeping the reply of the send that did it
    assert already_sent(ENTRY, QUEUED) == Fate(SettleWrite("1-0", TASK_ID, status=note), "skipped")


@pytest.mark.parametrize(
    ("queued", "due_ms", "recipients", "tries"),
    [
        (QUEUED, NOW, [A, B], 0),  # a stop before its slot: back at once
        (QueuedTask(TASK_ID, NOW, QUEUED.task, tries=3), NOW + 5000, [A, B], 3),  # quota
        (QueuedTask(TASK_ID, NOW, QUEUED.task, recipients=(B,)), NOW, [B], 0),  # a retry copy
    ],
)
def test_hold_puts_the_entry_back_unsent_without_an_attempt(
    queued: QueuedTask, due_ms: int, recipients: list[str], tries: int
) -> None:
    planned = hold(ENTRY, queued, "send quota reached", due_ms=due_ms)
    copy = _retry(due_ms - NOW, recipients, tries, "send quota reached")
    assert planned == Fate(
        SettleWrite(
            "1-0",
            TASK_ID,
            retry=copy,
            status=StatusNote("retrying", tries, "send quota reached"),
        ),
        "held",
        "send quota reached",
        retry_recipients=len(recipients),
    )
