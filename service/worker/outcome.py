"""What an attempt decides for a task: pure functions, tested as tables.

RFC 5321 splits replies into transient (4yz: try later) and permanent (5yz: never), and RFC 3463
refines that per recipient. A send can end three ways for each recipient: accepted, retry
later, or dead-lettered; the whole attempt is summed up in a `Decision`, from which the fate
planner (`fate.py`) says what to write to Redis in one atomic step.

A failure that says nothing about the email itself (the SMTP server is down, refuses our
credentials or our TLS) is a `PAUSE`: the task goes back without using an attempt and the worker
stops taking work until the server is usable again. With a shared rate limit, a reply asking us
to slow down (`throttling.py`) is a `THROTTLE`: the task goes back without using an attempt and
the limiter lowers the rate of every worker.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..task import distinct_addresses
from .smtp_result import Answered, FailureKind, SendFailure, SendResult, first_line
from .throttling import is_slow_down

__all__ = [
    "MAX_DELIVERIES_WITHOUT_OUTCOME",
    "Decision",
    "Failure",
    "Verdict",
    "after_failure",
    "after_send",
    "classify_failure",
    "decide",
    "is_permanent_reply",
    "is_poison",
]

# An entry Redis has handed out this often without any attempt recording an outcome crashes
# or hangs its worker (a failed send always records one): it goes to the dead letters.
MAX_DELIVERIES_WITHOUT_OUTCOME: Final = 5

# RFC 3463 enhanced status code at the start of a reply text, e.g. "5.2.2 Mailbox full".
_ENHANCED_CODE = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# X.2.2 (mailbox full) can clear without the sender doing anything; MTAs retry it even as 552.
_TRANSIENT_DESPITE_5XX: Final = {("2", "2")}


class Verdict(enum.Enum):
    """What a failed attempt means for the whole task."""

    RETRY = "retry"  # try again later; the attempt counts
    DEAD = "dead"  # it will never succeed
    PAUSE = "pause"  # the SMTP service is unusable: try again once it is, uncounted
    THROTTLE = "throttle"  # the server asked us to slow down: try again, slower, uncounted


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified send error."""

    verdict: Verdict
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything one attempt decided for the task's recipients."""

    accepted: int  # recipients the SMTP server accepted in this attempt
    retry: tuple[str, ...] = ()  # recipients a retry copy of the task will send to later
    tries: int = 0  # failed attempts the retry copy carries
    dead: tuple[str, ...] = ()  # recipients given up on, recorded in the dead-letter stream
    reason: str = ""  # why the recipients not accepted were not (all of them)
    dead_reason: str = ""  # why the dead recipients were given up
    paused: bool = False  # the retry is due at once and used no attempt (SMTP unusable)
    throttled: bool = False  # the retry used no attempt: the server asked us to slow down
    answer: str = ""  # the server's reply to the message, when it accepted a recipient

    @property
    def outcome(self) -> str:
        """The word the logs use for it."""
        if self.paused:
            return "requeued"
        if self.throttled and not self.accepted:
            return "throttled"
        if not self.retry and not self.dead:
            return "sent"
        if self.accepted:
            return "partly_sent"
        return "retry" if self.retry else "dead_letter"

    @property
    def finished(self) -> bool:
        """Whether the task reached every recipient it ever will (nothing left to retry)."""
        return self.accepted > 0 and not self.retry


def is_permanent_reply(code: int, message: str) -> bool:
    """5yz is permanent, except enhanced codes that describe a condition that clears by itself."""
    if code < 500:
        return False
    match = _ENHANCED_CODE.match(message)
    return not (match and (match[2], match[3]) in _TRANSIENT_DESPITE_5XX)


def classify_failure(failure: SendFailure, *, adaptive: bool = False) -> Failure:
    """What a send that failed as a whole means for the task (`adaptive`: a shared rate limit
    adapts to "slow down" replies, which then use no attempt)."""
    reply = failure.reply
    if adaptive and reply is not None and is_slow_down(reply.code, reply.text):
        return Failure(Verdict.THROTTLE, failure.detail)
    match failure.kind:
        case FailureKind.UNAVAILABLE:
            return Failure(Verdict.PAUSE, failure.detail)
        case FailureKind.SENDER_REFUSED:
            # Usually our sender address or account, which an operator can fix; retrying
            # (counted) gives them the retry period to do so before anything is lost.
            return Failure(Verdict.RETRY, f"sender refused: {failure.detail}")
        case FailureKind.UNSUPPORTED:  # the same server will never take this email
            return Failure(Verdict.DEAD, failure.detail)
        case FailureKind.REFUSED if failure.reply is not None:
            permanent = is_permanent_reply(failure.reply.code, failure.reply.text)
            return Failure(Verdict.DEAD if permanent else Verdict.RETRY, failure.detail)
        case _:
            return Failure(Verdict.RETRY, failure.detail)


def decide(
    result: SendResult,
    recipients: Sequence[str],
    *,
    tries: int,
    max_attempts: int,
    adaptive: bool = False,
) -> Decision:
    """The decision of an attempt that ended with `result` (`adaptive`: see `classify_failure`)."""
    if isinstance(result, Answered):
        refused = {to: (reply.code, reply.text) for to, reply in result.refused.items()}
        answer = str(result.reply) if result.reply is not None else ""
        return after_send(
            recipients,
            refused,
            tries=tries,
            max_attempts=max_attempts,
            adaptive=adaptive,
            answer=answer,
        )
    return after_failure(
        classify_failure(result, adaptive=adaptive),
        recipients,
        tries=tries,
        max_attempts=max_attempts,
    )


def after_send(
    recipients: Sequence[str],
    refused: Mapping[str, tuple[int, str]],
    *,
    tries: int,
    max_attempts: int,
    adaptive: bool = False,
    answer: str = "",
) -> Decision:
    """The decision of an attempt the server answered recipient by recipient.

    `refused` maps each refused recipient to its reply (code, text); the others were accepted
    and are never sent to again. Refused recipients with a transient reply are retried, the
    others dead-lettered; once the attempts are used up, every refused recipient is. Each
    address counts once, however often `recipients` names it. With `adaptive`, when every
    refusal asks us to slow down, the refused recipients are retried without using an attempt.
    `answer` is the server's reply to the message, kept when a recipient was accepted.
    """
    recipients = distinct_addresses(recipients)
    if not refused:
        return Decision(accepted=len(recipients), answer=answer)
    if len(refused) >= len(recipients):
        answer = ""  # nothing was sent: no reply to a message
    if adaptive and all(is_slow_down(*reply) for reply in refused.values()):
        return Decision(
            accepted=len(recipients) - len(refused),
            retry=tuple(r for r in recipients if r in refused),
            tries=tries,
            reason=_refusals(list(refused), refused),
            throttled=True,
            answer=answer,
        )
    failed_tries = tries + 1
    retry = [r for r in recipients if r in refused and not is_permanent_reply(*refused[r])]
    dead = [r for r in recipients if r in refused and r not in retry]
    if retry and failed_tries >= max_attempts:
        dead, retry = [*dead, *retry], []
        dead_reason = f"gave up after {failed_tries} attempts; {_refusals(dead, refused)}"
    else:
        dead_reason = _refusals(dead, refused)
    return Decision(
        accepted=len(recipients) - len(refused),
        retry=tuple(retry),
        tries=failed_tries,
        dead=tuple(dead),
        reason=_refusals(list(refused), refused),
        dead_reason=dead_reason if dead else "",
        answer=answer,
    )


def after_failure(
    failure: Failure, recipients: Sequence[str], *, tries: int, max_attempts: int
) -> Decision:
    """The decision of an attempt that failed as a whole (nothing was accepted)."""
    everyone, reason = tuple(recipients), failure.reason
    if failure.verdict is Verdict.PAUSE:
        return Decision(accepted=0, retry=everyone, tries=tries, reason=reason, paused=True)
    if failure.verdict is Verdict.THROTTLE:
        return Decision(accepted=0, retry=everyone, tries=tries, reason=reason, throttled=True)
    if failure.verdict is Verdict.DEAD:
        return Decision(
            accepted=0, dead=everyone, tries=tries + 1, reason=reason, dead_reason=reason
        )
    failed_tries = tries + 1
    if failed_tries >= max_attempts:
        gave_up = f"gave up after {failed_tries} attempts; {reason}"
        return Decision(
            accepted=0, dead=everyone, tries=failed_tries, reason=gave_up, dead_reason=gave_up
        )
    return Decision(accepted=0, retry=everyone, tries=failed_tries, reason=reason)


def is_poison(deliveries: int) -> bool:
    """Whether an entry handed out `deliveries` times without an outcome must stop here.

    A poison entry (one that crashes or hangs its worker) never reports a failure: only its
    delivery count, which Redis raises on every redelivery, shows it.
    """
    return deliveries > MAX_DELIVERIES_WITHOUT_OUTCOME


def _refusals(recipients: Sequence[str], refused: Mapping[str, tuple[int, str]]) -> str:
    shown = ", ".join(
        f"{r} {refused[r][0]} {first_line(refused[r][1])}".rstrip() for r in recipients[:5]
    )
    more = f" and {len(recipients) - 5} more" if len(recipients) > 5 else ""
    return f"refused: {shown}{more}"
