"""What an attempt decides, as tables (RFC 5321: 4yz transient, 5yz permanent; RFC 3463)."""

from __future__ import annotations

import aiosmtplib
import pytest

from service.errors import SmtpUnavailableError
from service.worker.outcome import (
    MAX_DELIVERIES_WITHOUT_OUTCOME,
    Decision,
    Failure,
    Verdict,
    after_failure,
    after_send,
    classify_failure,
    decide,
    is_permanent_reply,
    is_poison,
)
from service.worker.smtp_result import Answered, FailureKind, Reply, SendFailure, read_failure

RETRY, DEAD, PAUSE, THROTTLE = Verdict.RETRY, Verdict.DEAD, Verdict.PAUSE, Verdict.THROTTLE
A, B, C = "a@example.com", "b@example.com", "c@example.com"


@pytest.mark.parametrize(
    ("error", "verdict", "reason"),
    [
        (aiosmtplib.SMTPDataError(554, "5.7.1 rejected as spam"), DEAD, "SMTP 554 5.7.1 rejected"),
        (aiosmtplib.SMTPDataError(552, "5.3.4 message too big"), DEAD, "SMTP 552"),
        (aiosmtplib.SMTPDataError(552, "5.2.2 mailbox full"), RETRY, "SMTP 552 5.2.2"),
        (aiosmtplib.SMTPDataError(451, "4.3.0 try again later"), RETRY, "SMTP 451"),
        (aiosmtplib.SMTPResponseException(421, "4.7.0 too many connections"), RETRY, "SMTP 421"),
        (aiosmtplib.SMTPSenderRefused(550, "bad sender", "s@example.com"), RETRY, "sender refused"),
        (aiosmtplib.SMTPSenderRefused(452, "4.3.1 storage", "s@example.com"), RETRY, "SMTP 452"),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), PAUSE, "SMTP 535"),
        (aiosmtplib.SMTPHeloError(501, "bad EHLO"), PAUSE, "SMTP 501 bad EHLO"),
        (aiosmtplib.SMTPConnectResponseError(554, "no service"), PAUSE, "SMTP 554 no service"),
        (SmtpUnavailableError("cannot open a session: refused"), PAUSE, "cannot open a session"),
        (aiosmtplib.SMTPServerDisconnected("lost"), RETRY, "SMTPServerDisconnected: lost"),
        (aiosmtplib.SMTPReadTimeoutError("slow"), RETRY, "SMTP send timed out"),
        (TimeoutError(), RETRY, "SMTP send timed out"),
        (ConnectionResetError("reset"), RETRY, "ConnectionResetError: reset"),
        # The same server will never take it: a clear permanent failure, not a retry for days.
        (aiosmtplib.SMTPNotSupported("no SMTPUTF8, which it needs"), DEAD, "no SMTPUTF8"),
        (ValueError("odd"), RETRY, "unexpected ValueError: odd"),
    ],
)
def test_classify_failure(error: BaseException, verdict: Verdict, reason: str) -> None:
    failure = classify_failure(read_failure(error))
    assert failure.verdict is verdict
    assert reason in failure.reason


@pytest.mark.parametrize(
    ("code", "message", "permanent"),
    [
        (550, "5.1.1 no such user", True),
        (554, "", True),
        (552, "5.2.2 mailbox full", False),
        (552, "  5.2.2 over quota", False),
        (552, "5.2.22 odd", True),
        (450, "4.2.1 try later", False),
        (421, "4.7.0 rate limited", False),
        (452, "4.2.2 mailbox full", False),
    ],
)
def test_is_permanent_reply(code: int, message: str, permanent: bool) -> None:
    assert is_permanent_reply(code, message) is permanent


@pytest.mark.parametrize(
    ("refused", "tries", "max_attempts", "expected"),
    [
        # Everyone accepted.
        ({}, 0, 5, Decision(accepted=3)),
        # One transient refusal: only that recipient is retried.
        ({B: (450, "4.2.1 busy")}, 0, 5, Decision(accepted=2, retry=(B,), tries=1)),
        # One permanent refusal: recorded as dead, the rest are done.
        ({C: (550, "5.1.1 unknown")}, 2, 5, Decision(accepted=2, tries=3, dead=(C,))),
        # Mixed: retry one, dead-letter one.
        (
            {A: (550, "no"), C: (451, "later")},
            0,
            5,
            Decision(accepted=1, retry=(C,), tries=1, dead=(A,)),
        ),
        # Transient refusals on the last attempt are given up.
        ({B: (450, "busy")}, 4, 5, Decision(accepted=2, tries=5, dead=(B,))),
        # All refused, all permanent: nothing sent, the task is dead.
        (
            {A: (550, "x"), B: (553, "x"), C: (550, "x")},
            0,
            5,
            Decision(accepted=0, tries=1, dead=(A, B, C)),
        ),
    ],
)
def test_after_send(
    refused: dict[str, tuple[int, str]], tries: int, max_attempts: int, expected: Decision
) -> None:
    decision = after_send([A, B, C], refused, tries=tries, max_attempts=max_attempts)
    assert (decision.accepted, decision.retry, decision.tries, decision.dead) == (
        expected.accepted,
        expected.retry,
        expected.tries,
        expected.dead,
    )
    assert not decision.paused
    assert all(recipient in decision.reason for recipient in refused)
    # A dead-letter record names its own recipients only, not the ones being retried.
    assert all(recipient in decision.dead_reason for recipient in decision.dead)
    assert not any(recipient in decision.dead_reason for recipient in decision.retry)


@pytest.mark.parametrize(
    ("recipients", "refused", "accepted", "retry"),
    [
        ([A, B, A], {}, 2, ()),
        ([A, B, A], {A: (450, "4.2.1 busy")}, 1, (A,)),
        ([A, A, B, B, C], {B: (452, "4.5.3 too many"), C: (451, "later")}, 1, (B, C)),
    ],
)
def test_after_send_counts_and_retries_each_address_once(
    recipients: list[str], refused: dict[str, tuple[int, str]], accepted: int, retry: tuple[str]
) -> None:
    decision = after_send(recipients, refused, tries=0, max_attempts=5)
    assert (decision.accepted, decision.retry) == (accepted, retry)


@pytest.mark.parametrize(
    ("verdict", "tries", "max_attempts", "expected"),
    [
        # expected: (recipients retried, recipients dead, tries recorded, outcome)
        (RETRY, 0, 5, ((A, B), (), 1, "retry")),
        (RETRY, 3, 5, ((A, B), (), 4, "retry")),
        (RETRY, 4, 5, ((), (A, B), 5, "dead_letter")),
        (RETRY, 0, 1, ((), (A, B), 1, "dead_letter")),
        (DEAD, 0, 5, ((), (A, B), 1, "dead_letter")),
        # An unusable SMTP service costs no attempt, even on the last one.
        (PAUSE, 4, 5, ((A, B), (), 4, "requeued")),
        # Neither does a "slow down" from the server.
        (THROTTLE, 4, 5, ((A, B), (), 4, "throttled")),
    ],
)
def test_after_failure(
    verdict: Verdict, tries: int, max_attempts: int, expected: tuple[object, ...]
) -> None:
    failure = Failure(verdict, "why")
    decision = after_failure(failure, [A, B], tries=tries, max_attempts=max_attempts)
    actual = (decision.retry, decision.dead, decision.tries, decision.outcome)
    assert actual == expected
    assert decision.paused is (verdict is PAUSE)
    assert decision.throttled is (verdict is THROTTLE)
    assert "why" in decision.reason
    assert ("why" in decision.dead_reason) is bool(decision.dead)
    assert not decision.finished


@pytest.mark.parametrize(
    ("decision", "outcome", "finished"),
    [
        (Decision(accepted=2), "sent", True),
        (Decision(accepted=1, dead=(B,)), "partly_sent", True),
        (Decision(accepted=1, retry=(B,)), "partly_sent", False),
        (Decision(accepted=0, retry=(A,)), "retry", False),
        (Decision(accepted=0, dead=(A,)), "dead_letter", False),
        (Decision(accepted=0, retry=(A,), paused=True), "requeued", False),
        (Decision(accepted=0, retry=(A,), throttled=True), "throttled", False),
        (Decision(accepted=1, retry=(B,), throttled=True), "partly_sent", False),
    ],
)
def test_decision_outcome(decision: Decision, outcome: str, finished: bool) -> None:
    assert decision.outcome == outcome
    assert decision.finished is finished


@pytest.mark.parametrize(
    ("deliveries", "poison"),
    [
        (1, False),
        (MAX_DELIVERIES_WITHOUT_OUTCOME, False),
        (MAX_DELIVERIES_WITHOUT_OUTCOME + 1, True),
    ],
)
def test_is_poison(deliveries: int, poison: bool) -> None:
    assert is_poison(deliveries) is poison


@pytest.mark.parametrize(
    ("error", "adaptive", "verdict"),
    [
        # With a shared rate limit, a "slow down" uses no attempt...
        (aiosmtplib.SMTPDataError(454, "Throttling failure: Maximum sending rate"), True, THROTTLE),
        (aiosmtplib.SMTPResponseException(421, "4.7.0 Try again later"), True, THROTTLE),
        (aiosmtplib.SMTPSenderRefused(451, "4.7.28 rate limited", "s@example.com"), True, THROTTLE),
        # ...without one there is nothing to slow down: an ordinary retry, as before.
        (aiosmtplib.SMTPDataError(454, "Throttling failure: Maximum sending rate"), False, RETRY),
        # Not a slow-down whatever the setting.
        (aiosmtplib.SMTPDataError(452, "4.2.2 Mailbox full"), True, RETRY),
        (aiosmtplib.SMTPDataError(554, "5.7.1 rate limit"), True, DEAD),
        (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 Temporary auth failure"), True, PAUSE),
    ],
)
def test_classify_failure_with_a_shared_rate_limit(
    error: BaseException, adaptive: bool, verdict: Verdict
) -> None:
    assert classify_failure(read_failure(error), adaptive=adaptive).verdict is verdict


@pytest.mark.parametrize(
    ("refused", "adaptive", "expected"),
    [
        # expected: (retry, tries, dead, throttled)
        ({B: (452, "4.7.28 rate"), C: (421, "4.7.0 later")}, True, ((B, C), 2, (), True)),
        ({B: (452, "4.7.28 rate"), C: (550, "5.1.1 unknown")}, True, ((B,), 3, (C,), False)),
        ({B: (452, "4.7.28 rate")}, False, ((B,), 3, (), False)),
        ({B: (452, "4.2.2 full")}, True, ((B,), 3, (), False)),
    ],
)
def test_after_send_with_a_shared_rate_limit(
    refused: dict[str, tuple[int, str]], adaptive: bool, expected: tuple[object, ...]
) -> None:
    decision = after_send([A, B, C], refused, tries=2, max_attempts=5, adaptive=adaptive)
    assert (decision.retry, decision.tries, decision.dead, decision.throttled) == expected


QUEUED_AS = Reply(250, "2.0.0 Ok: queued as 4Zx")


@pytest.mark.parametrize(
    ("result", "answer"),
    [
        (Answered({}, QUEUED_AS), "SMTP 250 2.0.0 Ok: queued as 4Zx"),  # everyone accepted
        (Answered({"b@example.com": Reply(550)}, QUEUED_AS), "SMTP 250 2.0.0 Ok: queued as 4Zx"),
        (Answered({"b@example.com": Reply(451)}, QUEUED_AS), "SMTP 250 2.0.0 Ok: queued as 4Zx"),
        # Everyone refused: no message went, so there is no reply to one.
        (Answered({"a@example.com": Reply(550), "b@example.com": Reply(550)}), ""),
        (Answered({}), ""),  # a reply not known
        (SendFailure(FailureKind.REFUSED, "SMTP 554", Reply(554)), ""),
    ],
)
def test_decide_keeps_the_servers_reply_to_the_message(
    result: Answered | SendFailure, answer: str
) -> None:
    recipients = ["a@example.com", "b@example.com"]
    assert decide(result, recipients, tries=0, max_attempts=5).answer == answer
