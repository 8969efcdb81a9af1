"""What one SMTP send came to, in this project's own words: the one place that reads
aiosmtplib's exceptions, and the one helper that shortens a reply's text.

The pool (`smtp.py`) returns `Answered` or `SendFailure` and never lets an aiosmtplib exception
out; the decisions (`outcome.py`) and the logs read only these types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

import aiosmtplib

from ..errors import SmtpUnavailableError

__all__ = [
    "Answered",
    "FailureKind",
    "Reply",
    "SendFailure",
    "SendResult",
    "first_line",
    "pushes_back",
    "read_failure",
    "session_failure",
]

# How much of a reply's or an error's text a log line or a dead letter carries.
_MAX_CHARS: Final = 200

# Refusals while a session opens: about the server or our account, never about one email.
_SESSION_REFUSALS: Final = (
    aiosmtplib.SMTPAuthenticationError,
    aiosmtplib.SMTPConnectResponseError,
    aiosmtplib.SMTPHeloError,
)


def first_line(text: str) -> str:
    """The first non-blank line of a reply or error text, cut to 200 characters ("" if none).

    RFC 5321 makes a reply's text optional: a bare `421` has none.
    """
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:_MAX_CHARS]
    return ""


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: its code and its text (lines joined by newlines; may be empty)."""

    code: int
    text: str = ""

    def __str__(self) -> str:
        return f"SMTP {self.code} {first_line(self.text)}".rstrip()


class FailureKind(enum.Enum):
    """How a send failed as a whole (nothing was accepted)."""

    UNAVAILABLE = "unavailable"  # no usable session: down, refusing us, TLS or AUTH failing
    SENDER_REFUSED = "sender_refused"  # MAIL FROM refused
    REFUSED = "refused"  # the server refused the message (a DATA reply, a 421 mid-way...)
    UNSUPPORTED = "unsupported"  # the server lacks an extension the email needs (SMTPUTF8...)
    TIMEOUT = "timeout"  # the whole send outlasted SMTP_TIMEOUT_SECONDS
    CONNECTION = "connection"  # the connection broke or the server spoke nonsense
    UNEXPECTED = "unexpected"  # anything else: a bug here or in a library


@dataclass(frozen=True, slots=True)
class SendFailure:
    """A send that failed as a whole; `detail` is one line fit for a log, without secrets."""

    kind: FailureKind
    detail: str
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    """The server answered recipient by recipient: every one not in `refused` was accepted.

    When every recipient is refused, no message was sent and there is no `reply`; else `reply`
    is the server's answer to the message (its queue id, usually).
    """

    refused: dict[str, Reply] = field(default_factory=dict)
    reply: Reply | None = None


SendResult = Answered | SendFailure


def read_failure(exc: BaseException) -> SendFailure:
    """The `SendFailure` an exception raised by a whole send means."""
    if isinstance(exc, SmtpUnavailableError):
        return SendFailure(FailureKind.UNAVAILABLE, exc.reason)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = Reply(exc.code, exc.message)
        if isinstance(exc, _SESSION_REFUSALS):
            kind = FailureKind.UNAVAILABLE
        elif isinstance(exc, aiosmtplib.SMTPSenderRefused):
            kind = FailureKind.SENDER_REFUSED
        else:
            kind = FailureKind.REFUSED
        return SendFailure(kind, str(reply), reply)
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return SendFailure(FailureKind.TIMEOUT, "SMTP send timed out")
    what = f"{type(exc).__name__}: {first_line(str(exc))}".rstrip(": ")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SendFailure(FailureKind.UNSUPPORTED, first_line(str(exc)))
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return SendFailure(FailureKind.CONNECTION, what)
    return SendFailure(FailureKind.UNEXPECTED, f"unexpected {what}")


def pushes_back(exc: BaseException) -> bool:
    """Whether a new session's failure says "no more sessions" rather than "unusable".

    A server at its connection limit greets a new session with a 4xx (Postfix: `421 4.7.0
    Error: too many connections`), says "too many" in another reply, or drops the connection at
    once; the sessions it already has keep working.
    """
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        greeting = isinstance(exc, aiosmtplib.SMTPConnectResponseError)
        transient = 400 <= exc.code < 500 if greeting else exc.code == 421
        return transient or "too many" in exc.message.lower()
    return isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError)


def session_failure(exc: BaseException, where: str) -> str:
    """Why no session with `where` (host:port) could be opened, in one line, credential-free."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        detail = f"authentication failed (SMTP {exc.code}); check SMTP_USERNAME/SMTP_PASSWORD"
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        detail = str(Reply(exc.code, exc.message))
    elif isinstance(exc, TimeoutError):
        detail = "timed out"
    else:
        detail = f"{type(exc).__name__}: {first_line(str(exc))}".rstrip(": ")
    return f"cannot open an SMTP session with {where}: {detail}"
