"""Turning a task into the message and envelope the SMTP server receives (pure, no I/O)."""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from ..task import addr_spec
from ..wire import Envelope

__all__ = ["Outgoing", "render"]

# SMTP policy: CRLF line endings, lines folded at 78, and values with CR/LF refused.
_POLICY = email.policy.SMTP


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A rendered email: the message plus the SMTP envelope it travels in."""

    message: EmailMessage
    mail_from: str
    recipients: list[str]


def render(envelope: Envelope, *, default_sender: str) -> Outgoing:
    """Build the message for `envelope`.

    Date (when the task was enqueued, or due if scheduled) and Message-ID (from the task id,
    fixed at enqueue) do not depend on the moment of sending, so every redelivery or retry of a
    task produces the same message and a duplicate is recognisable downstream. A retry after
    some recipients were accepted sends to the others only (the envelope, not the headers).
    """
    task = envelope.task
    sender = task.sender or default_sender
    mail_from = addr_spec(sender)
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(task.to)
    if task.cc:
        message["Cc"] = ", ".join(task.cc)
    if task.reply_to:
        message["Reply-To"] = ", ".join(task.reply_to)
    message["Subject"] = task.subject
    message["Date"] = format_datetime(datetime.fromtimestamp(envelope.dated_ms / 1000, tz=UTC))
    message["Message-ID"] = f"<{envelope.task_id}@{mail_from.rpartition('@')[2]}>"
    for name, value in task.headers.items():
        message[name] = value
    if task.text is not None:
        message.set_content(task.text)
        if task.html is not None:
            message.add_alternative(task.html, subtype="html")
    elif task.html is not None:
        message.set_content(task.html, subtype="html")
    return Outgoing(message=message, mail_from=mail_from, recipients=envelope.envelope_recipients())
