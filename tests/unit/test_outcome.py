"""The fate of an entry after an attempt, as tables (RFC 5321: 4yz transient, 5yz permanent)."""

from __future__ import annotations

import aiosmtplib
import pytest

from service.worker.outcome import Failure, Fate, classify_failure, fate_after_failure, is_exhausted


def _refused(*codes: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(code, "no", f"u{i}@example.com")
            for i, code in enumerate(codes)
        ]
    )


@pytest.mark.parametrize(
    ("error", "permanent", "reason"),
    [
        (aiosmtplib.SMTPDataError(554, "5.7.1 rejected as spam"), True, "SMTP 554 5.7.1 rejected"),
        (aiosmtplib.SMTPDataError(552, "5.3.4 message too big"), True, "SMTP 552"),
        (aiosmtplib.SMTPSenderRefused(550, "bad sender", "s@example.com"), False, "SMTP 550"),
        (aiosmtplib.SMTPSenderRefused(530, "5.7.0 auth required", "s@x.com"), False, "SMTP 530"),
        (aiosmtplib.SMTPHeloError(501, "bad EHLO"), False, "SMTP 501 bad EHLO"),
        (aiosmtplib.SMTPConnectResponseError(554, "no service"), False, "SMTP 554 no service"),
        (aiosmtplib.SMTPDataError(451, "4.3.0 try again later"), False, "SMTP 451"),
        (aiosmtplib.SMTPResponseException(421, "4.7.0 too many connections"), False, "SMTP 421"),
        (aiosmtplib.SMTPSenderRefused(452, "4.3.1 storage", "s@example.com"), False, "SMTP 452"),
        (_refused(550, 553), True, "all recipients refused: u0@example.com 550"),
        (_refused(550, 450), False, "all recipients refused"),
        (_refused(452), False, "all recipients refused"),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), False, "SMTP 535"),
        (aiosmtplib.SMTPServerDisconnected("lost"), False, "SMTPServerDisconnected: lost"),
        (aiosmtplib.SMTPConnectError("refused"), False, "SMTPConnectError"),
        (aiosmtplib.SMTPReadTimeoutError("slow"), False, "SMTP send timed out"),
        (TimeoutError(), False, "SMTP send timed out"),
        (ConnectionResetError("reset"), False, "ConnectionResetError: reset"),
        (aiosmtplib.SMTPNotSupported("STARTTLS"), False, "SMTPNotSupported"),
        (ValueError("odd"), False, "unexpected ValueError: odd"),
    ],
)
def test_classify_failure(error: BaseException, permanent: bool, reason: str) -> None:
    failure = classify_failure(error)
    assert failure.permanent is permanent
    assert reason in failure.reason


@pytest.mark.parametrize(
    ("permanent", "attempt", "max_attempts", "fate"),
    [
        (True, 1, 5, Fate.DEAD_LETTER),
        (False, 1, 5, Fate.RETRY),
        (False, 4, 5, Fate.RETRY),
        (False, 5, 5, Fate.DEAD_LETTER),
        (False, 1, 1, Fate.DEAD_LETTER),
    ],
)
def test_fate_after_failure(permanent: bool, attempt: int, max_attempts: int, fate: Fate) -> None:
    failure = Failure(permanent, "why")
    assert fate_after_failure(failure, attempt=attempt, max_attempts=max_attempts) is fate


@pytest.mark.parametrize(
    ("deliveries", "max_attempts", "exhausted"),
    [(1, 5, False), (5, 5, False), (6, 5, True), (2, 1, True)],
)
def test_is_exhausted(deliveries: int, max_attempts: int, exhausted: bool) -> None:
    assert is_exhausted(deliveries, max_attempts=max_attempts) is exhausted
