"""Turning a task into the message and envelope the SMTP server receives (pure, no I/O).

The standard library's `email` package is the reference for every byte sent, but building an
`EmailMessage` parses each header value again (a token tree per address) and folds it again on
output, a large share of a worker's CPU time. Most transactional emails are plain, though: short
ASCII header lines and 7-bit bodies. For those, `render` writes the bytes itself, exactly as the
library would write them (the tests compare both byte for byte). A header line that needs folding
or RFC 2047 encoding is still written by the library's own header classes; a body that needs a
transfer encoding (non-ASCII text, lines over 78 characters, control characters) sends the
whole email through the library. Extra headers are unstructured fields either way: validation
(`service/task.py`) refuses every name the library or aiosmtplib would treat specially
(Content-*, Resent-*...).
"""

from __future__ import annotations

import email
import email.policy
import functools
import random
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from ..task import addr_spec, distinct_addresses
from ..wire import QueuedTask

__all__ = ["Outgoing", "render"]

# SMTP policy: CRLF line endings, lines folded at 78, and values with CR/LF refused.
_POLICY: Final = email.policy.SMTP
_MAX_LINE: Final = _POLICY.max_line_length or 78
# Words of printable ASCII separated by single spaces: what the library writes out verbatim when
# the line fits (checked against the library for every shape in the tests).
_VERBATIM_VALUE: Final = re.compile(r"[!-~]+(?: [!-~]+)*")
_TEXT_HEADERS: Final = (
    'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
)
# Control characters other than TAB, CR and LF. RFC 2045 (2.7, 2.8) allows no NUL in 7bit or
# 8bit data, and the library would send any of them raw under either: a body holding one is
# sent quoted-printable instead, which writes each as =XX (RFC 2045 6.7), so the message stays
# valid and the body arrives exactly as written.
_BODY_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BODY_CONTROL_BYTES: Final = re.compile(_BODY_CONTROL.pattern.encode())
# What the library's generator writes for a multipart boundary: 15 '=', 19 digits, '=='.
_BOUNDARY_DIGITS: Final = len(repr(sys.maxsize - 1))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A rendered email: its content plus the SMTP envelope it travels in.

    `content` is either the finished bytes (7-bit, CRLF, ready for DATA) or an `EmailMessage`
    that aiosmtplib flattens itself (it then picks 8-bit or 7-bit encodings per server).
    """

    content: bytes | EmailMessage
    mail_from: str
    recipients: list[str]

    @property
    def message(self) -> EmailMessage:
        """The email as an `EmailMessage` (for tests and debugging; the bytes parsed back)."""
        if isinstance(self.content, EmailMessage):
            return self.content
        text = self.content.replace(b"\r\n", b"\n")  # as the library builds it: LF line ends
        return email.message_from_bytes(text, _class=EmailMessage, policy=email.policy.default)


def render(queued: QueuedTask, *, default_sender: str, default_mail_from: str = "") -> Outgoing:
    """Build the email for `queued`.

    Date (when the task was enqueued, or due if scheduled) and Message-ID (from the task id,
    fixed at enqueue) do not depend on the moment of sending, so every redelivery or retry of a
    task produces the same message and a duplicate is recognisable downstream. A retry after
    some recipients were accepted sends to the others only (the envelope, not the headers).
    `default_mail_from` is the bare address of `default_sender`, when the caller has it.
    """
    task = queued.task
    if task.sender:
        sender, mail_from = task.sender, addr_spec(task.sender)
    else:
        sender, mail_from = default_sender, default_mail_from or addr_spec(default_sender)
    headers = [("From", sender), ("To", ", ".join(task.to))]
    if task.cc:
        headers.append(("Cc", ", ".join(task.cc)))
    if task.reply_to:
        headers.append(("Reply-To", ", ".join(task.reply_to)))
    headers.append(("Subject", task.subject))
    headers.append(("Date", _date_header(queued.dated_ms // 1000)))
    headers.append(("Message-ID", f"<{queued.task_id}@{mail_from.rpartition('@')[2]}>"))
    headers.extend(task.headers.items())
    data = _as_bytes(headers, task.text, task.html)
    content = data if data is not None else _as_message(headers, task.text, task.html)
    # Each address once, also in a retry copy written before envelopes were made distinct.
    return Outgoing(content, mail_from, distinct_addresses(queued.envelope_recipients()))


@functools.lru_cache(maxsize=256)
def _date_header(seconds: int) -> str:
    """The Date value for a second since the epoch: a burst of emails shares a few of them."""
    return format_datetime(datetime.fromtimestamp(seconds, tz=UTC))


def _as_message(headers: list[tuple[str, str]], text: str | None, html: str | None) -> EmailMessage:
    """The email built by the library (any content; aiosmtplib flattens it when sending)."""
    message = EmailMessage(policy=_POLICY)
    for name, value in headers:
        message[name] = value
    if text is not None:
        message.set_content(text, cte=_transfer_encoding(text))
        if html is not None:
            message.add_alternative(html, subtype="html", cte=_transfer_encoding(html))
    elif html is not None:
        message.set_content(html, subtype="html", cte=_transfer_encoding(html))
    return message


def _transfer_encoding(body: str) -> str | None:
    """Quoted-printable for a body with control characters; otherwise the library's choice."""
    return "quoted-printable" if _BODY_CONTROL.search(body) else None


def _as_bytes(headers: list[tuple[str, str]], text: str | None, html: str | None) -> bytes | None:
    """The email's bytes as the library would write them, or None when it must write them."""
    parts = [(subtype, _seven_bit(body)) for subtype, body in (("plain", text), ("html", html))]
    bodies = [(subtype, body) for subtype, body in parts if body is not None]
    if not bodies or len(bodies) != sum(1 for body in (text, html) if body is not None):
        return None  # a body needs a transfer encoding
    head = "".join([_header_line(name, value) for name, value in headers])
    if len(bodies) == 1:
        subtype, body = bodies[0]
        head += _TEXT_HEADERS.format(subtype) + "MIME-Version: 1.0\r\n\r\n"
        return head.encode("utf-8") + body
    boundary = _boundary()
    if any(boundary.encode() in body for _, body in bodies):
        return None  # never seen: the library would pick another boundary
    (_, plain), (_, rich) = bodies
    head += (
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="'
        f'{boundary}"\r\n\r\n--{boundary}\r\n{_TEXT_HEADERS.format("plain")}\r\n'
    )
    middle = f"\r\n--{boundary}\r\n{_TEXT_HEADERS.format('html')}MIME-Version: 1.0\r\n\r\n"
    end = f"\r\n--{boundary}--\r\n"
    return b"".join([head.encode("utf-8"), plain, middle.encode(), rich, end.encode()])


def _header_line(name: str, value: str) -> str:
    """One header as the library folds it: verbatim when short and plain, else by the library."""
    if len(name) + len(value) + 2 <= _MAX_LINE and _VERBATIM_VALUE.fullmatch(value):
        return f"{name}: {value}\r\n"
    return str(_POLICY.header_factory(name, value).fold(policy=_POLICY))


def _seven_bit(body: str | None) -> bytes | None:
    """A body the library sends as 7bit, with CRLF line ends; None if it must encode it."""
    if not body:
        return None
    try:
        data = body.encode("ascii")
    except UnicodeEncodeError:
        return None
    if _BODY_CONTROL_BYTES.search(data):
        return None
    lines = data.splitlines()
    if max(len(line) for line in lines) > _MAX_LINE:
        return None
    return b"\r\n".join(lines) + b"\r\n"


def _boundary() -> str:
    token = random.randrange(sys.maxsize)  # noqa: S311 - a MIME boundary, not a secret
    return f"{'=' * 15}{token:0{_BOUNDARY_DIGITS}d}=="
