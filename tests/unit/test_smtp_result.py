"""SMTP replies and errors in the project's own words: the one reply-text helper, and the one
translation of aiosmtplib's exceptions, as tables (odd inputs included: a bare `421`)."""

from __future__ import annotations

import aiosmtplib
import pytest

from service.errors import SmtpUnavailableError
from service.worker.smtp_result import (
    FailureKind,
    Reply,
    SendFailure,
    first_line,
    pushes_back,
    read_failure,
    session_failure,
)

UNAVAILABLE, SENDER = FailureKind.UNAVAILABLE, FailureKind.SENDER_REFUSED
REFUSED, TIMEOUT, CONNECTION = FailureKind.REFUSED, FailureKind.TIMEOUT, FailureKind.CONNECTION


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("", ""),  # a bare `421`: RFC 5321 makes the text optional
        ("   ", ""),
        ("\n\n", ""),
        ("4.7.0 slow down", "4.7.0 slow down"),
        ("  padded  ", "padded"),
        ("\nsecond line first", "second line first"),
        ("mx.example.com ESMTP\nPIPELINING\nSIZE 1000", "mx.example.com ESMTP"),
        ("x" * 300, "x" * 200),
    ],
)
def test_first_line(text: str, line: str) -> None:
    assert first_line(text) == line


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        (Reply(421), "SMTP 421"),
        (Reply(550, "5.1.1 no such user\nsee https://example.com"), "SMTP 550 5.1.1 no such user"),
    ],
)
def test_a_reply_shows_its_code_and_first_line(reply: Reply, shown: str) -> None:
    assert str(reply) == shown


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            aiosmtplib.SMTPConnectResponseError(421, ""),
            SendFailure(UNAVAILABLE, "SMTP 421", Reply(421, "")),
        ),
        (
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"),
            SendFailure(
                UNAVAILABLE, "SMTP 535 5.7.8 bad credentials", Reply(535, "5.7.8 bad credentials")
            ),
        ),
        (aiosmtplib.SMTPHeloError(501, ""), SendFailure(UNAVAILABLE, "SMTP 501", Reply(501, ""))),
        (
            aiosmtplib.SMTPSenderRefused(550, "", "s@example.com"),
            SendFailure(SENDER, "SMTP 550", Reply(550, "")),
        ),
        (aiosmtplib.SMTPDataError(554, ""), SendFailure(REFUSED, "SMTP 554", Reply(554, ""))),
        (
            aiosmtplib.SMTPResponseException(421, "4.7.0 closing"),
            SendFailure(REFUSED, "SMTP 421 4.7.0 closing", Reply(421, "4.7.0 closing")),
        ),
        (SmtpUnavailableError("cannot open"), SendFailure(UNAVAILABLE, "cannot open")),
        (TimeoutError(), SendFailure(TIMEOUT, "SMTP send timed out")),
        (aiosmtplib.SMTPReadTimeoutError("slow"), SendFailure(TIMEOUT, "SMTP send timed out")),
        (
            aiosmtplib.SMTPServerDisconnected(""),
            SendFailure(CONNECTION, "SMTPServerDisconnected"),
        ),
        (ConnectionResetError("reset"), SendFailure(CONNECTION, "ConnectionResetError: reset")),
        (
            aiosmtplib.SMTPNotSupported("no 8BITMIME\nmore"),
            SendFailure(FailureKind.UNSUPPORTED, "no 8BITMIME"),
        ),
        (
            ValueError("odd\nsecond line"),
            SendFailure(FailureKind.UNEXPECTED, "unexpected ValueError: odd"),
        ),
    ],
)
def test_read_failure(error: BaseException, expected: SendFailure) -> None:
    assert read_failure(error) == expected


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (aiosmtplib.SMTPConnectResponseError(421, ""), "SMTP 421"),
        (
            aiosmtplib.SMTPConnectResponseError(554, "5.7.1 go away\nfor good"),
            "SMTP 554 5.7.1 go away",
        ),
        (aiosmtplib.SMTPAuthenticationError(535, "x"), "authentication failed (SMTP 535)"),
        (TimeoutError(), "timed out"),
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError: [Errno 111]"),
        (OSError(""), "OSError"),
    ],
)
def test_session_failure_says_why_in_one_line(error: BaseException, detail: str) -> None:
    reason = session_failure(error, "mx.example.com:587")
    assert reason.startswith("cannot open an SMTP session with mx.example.com:587: ")
    assert detail in reason
    assert "\n" not in reason


@pytest.mark.parametrize(
    ("error", "pushes"),
    [
        (aiosmtplib.SMTPConnectResponseError(421, "4.7.0 Error: too many connections"), True),
        (aiosmtplib.SMTPConnectResponseError(421, ""), True),  # a bare 421 greeting
        (aiosmtplib.SMTPConnectResponseError(450, "busy"), True),
        (aiosmtplib.SMTPConnectResponseError(554, "5.7.1 go away"), False),  # refused for good
        (aiosmtplib.SMTPConnectResponseError(554, "Too many connections"), True),
        (aiosmtplib.SMTPHeloError(421, "closing"), True),
        (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 too many connections"), True),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), False),
        (aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), True),  # dropped at once
        (ConnectionResetError("reset"), True),
        (TimeoutError(), False),
        (ValueError("odd"), False),
    ],
)
def test_which_session_failures_push_back(error: BaseException, pushes: bool) -> None:
    assert pushes_back(error) is pushes
