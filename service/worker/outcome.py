"""What to do with an entry after a delivery attempt: pure decisions, tested as tables.

An attempt ends in one of three fates, each recorded in one atomic Redis step:
acknowledge (the SMTP server took it), leave it pending (a later delivery retries it, after
`WORKER_RECLAIM_IDLE_SECONDS`), or move it to the dead-letter stream (it can never succeed, or
it has used up `WORKER_MAX_ATTEMPTS`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import aiosmtplib

__all__ = ["Failure", "Fate", "classify_failure", "fate_after_failure", "is_exhausted"]


class Fate(enum.Enum):
    """How an attempt ends for the entry."""

    ACK = "sent"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a send failed: `permanent` failures are never retried."""

    permanent: bool
    reason: str


# Refusals before any recipient is named (greeting, EHLO, AUTH, MAIL FROM: "530 authentication
# required", "550 sender not allowed") concern the server or our account, not this email: they
# stay transient so a misconfiguration burns no task.
_OPERATOR_FAULTS = (
    aiosmtplib.SMTPAuthenticationError,
    aiosmtplib.SMTPConnectResponseError,
    aiosmtplib.SMTPHeloError,
    aiosmtplib.SMTPSenderRefused,
)


def classify_failure(exc: BaseException) -> Failure:
    """Map a send error to a `Failure` (RFC 5321: 4yz transient, 5yz permanent).

    Authentication, sender and TLS or capability errors are the operator's to fix, not the
    message's fault: they stay transient.
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = sorted({refused.code for refused in exc.recipients})
        summary = ", ".join(f"{r.recipient} {r.code}" for r in exc.recipients[:5])
        permanent = all(code >= 500 for code in codes)
        return Failure(permanent, f"all recipients refused: {summary}")
    if isinstance(exc, _OPERATOR_FAULTS):
        return Failure(False, f"SMTP {exc.code} {_first_line(exc.message)}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Failure(exc.code >= 500, f"SMTP {exc.code} {_first_line(exc.message)}")
    if isinstance(exc, TimeoutError):
        return Failure(False, "SMTP send timed out")
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return Failure(False, f"{type(exc).__name__}: {_first_line(str(exc))}")
    return Failure(False, f"unexpected {type(exc).__name__}: {_first_line(str(exc))}")


def fate_after_failure(failure: Failure, *, attempt: int, max_attempts: int) -> Fate:
    """Dead-letter permanent failures and the last allowed attempt; otherwise retry later."""
    if failure.permanent or attempt >= max_attempts:
        return Fate.DEAD_LETTER
    return Fate.RETRY


def is_exhausted(deliveries: int, *, max_attempts: int) -> bool:
    """Whether an entry delivered `deliveries` times has used up its attempts before this one.

    A poison entry (one that crashes or hangs its worker) never reports a failure: only its
    delivery count, which Redis raises on every redelivery, shows it.
    """
    return deliveries > max_attempts


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""
