"""One message over one open aiosmtplib session: the worker's only SMTP transaction.

Every email goes through `transmit`: MAIL FROM (with the options the caller asks for and SIZE
where offered), one RCPT TO per recipient, DATA and the message, every reply checked, with the
errors aiosmtplib's `sendmail` raises (after the same RSET). aiosmtplib keeps what it does well:
connecting, TLS, EHLO and AUTH.

Where the server offers PIPELINING (RFC 2920; Postfix's smtpd does by default), the
transaction takes two round trips instead of three plus one per recipient: MAIL, every RCPT and
DATA go out in one write, then the message in another. aiosmtplib reads one reply per command
written, so the replies of such a group are read by a `ReplyTap` (`pipelining.py`) that the
session's transport hands its data to, in front of aiosmtplib's protocol; everything else
still goes through aiosmtplib. Without PIPELINING each command waits for its reply.

A message the server cannot take as it is (SMTPUTF8 asked for but not offered, 8-bit bytes
without 8BITMIME) raises `SMTPNotSupported` before anything is written: it would never go
through, and a 7-bit fallback is the renderer's job.

The caller has the session to itself for the whole transaction (one message per connection at
a time, as in `SmtpPool`) and bounds it with a deadline of its own: no command has a timeout.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Final, NamedTuple

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.typing import SMTPStatus

from .pipelining import ReplyTap

__all__ = ["Transmitted", "dot_stuffed", "envelope_address", "greet", "transmit"]

# An address as it goes between angle brackets: a local part (a dot-atom-like run, or a quoted
# string) and a domain (or an address literal), with nothing that could end the command or add
# a parameter to it (no space, no control character, no angle bracket outside the quotes).
_ENVELOPE_ADDRESS: Final = re.compile(
    r'(?:"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"|[^\s"<>()\[\]\\,;:@\x00-\x1f\x7f]+)'
    r"@(?:[^\s\"<>()\[\]\\,;:@\x00-\x1f\x7f]+|\[[^\s\"<>\[\]\\\x00-\x1f\x7f]+\])"
)
# RCPT replies that accept a recipient (251: not local, will forward).
_RCPT_ACCEPTED: Final = frozenset({250, 251})
# A line starting with a dot gets another one on the wire (RFC 5321 4.5.2).
_LEADING_DOT: Final = re.compile(rb"(?m)^\.")
# A lone CR or LF: aiosmtplib turns each into CRLF before DATA, and so do we.
_LONE_LINE_END: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class Transmitted(NamedTuple):
    """A message the server took: the recipients it refused, and its reply to the message
    (which usually names the server's queue id for it, e.g. `250 2.0.0 Ok: queued as 4Zx`)."""

    refused: dict[str, SMTPResponse]
    reply: SMTPResponse


async def greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) unless the session already did it: extensions are known after."""
    if not client.is_ehlo_or_helo_needed:
        return
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


def envelope_address(address: str) -> bytes:
    """`address` as MAIL FROM or RCPT TO carry it, in angle brackets (UTF-8: SMTPUTF8).

    Raises ValueError for anything but one bare address: a line end, a space or a bracket
    could end the command or smuggle in another.
    """
    if not _ENVELOPE_ADDRESS.fullmatch(address):
        raise ValueError("not a bare address that an SMTP command can carry")
    return b"<%s>" % address.encode()


async def transmit(
    client: aiosmtplib.SMTP,
    mail_from: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    mail_options: Sequence[str] = (),
    plain_lines: bool = False,
) -> Transmitted:
    """Send `data` from `mail_from` to `recipients` over `client`; what the server answered.

    `mail_options` are MAIL FROM parameters (`BODY=8BITMIME`, `SMTPUTF8`); SIZE is added where
    the server offers it, SMTPUTF8 where an address is not ASCII. `plain_lines` says that every
    line of `data` ends in CRLF and none starts with a dot (the renderer knows it of its own
    output): DATA then carries it without a scan (see `dot_stuffed`). Raises, sending nothing,
    ValueError for an address no command can carry or no recipient, and SMTPNotSupported for a
    message the server cannot take (see the module). Then raises SMTPSenderRefused,
    SMTPRecipientsRefused (all refused) or SMTPDataError after an RSET, as aiosmtplib's
    sendmail does.
    """
    if not recipients:
        raise ValueError("no recipient to send to")
    mail_address = envelope_address(mail_from)
    rcpts = [b"RCPT TO:%s\r\n" % envelope_address(to) for to in recipients]
    await greet(client)  # the extensions are known after EHLO
    utf8_addresses = not (mail_address.isascii() and all(rcpt.isascii() for rcpt in rcpts))
    if utf8_addresses and "SMTPUTF8" not in (option.upper() for option in mail_options):
        mail_options = [*mail_options, "SMTPUTF8"]  # RFC 6531: the addresses need it
    _check_supported(client, mail_options, data)
    options = [option.encode() for option in mail_options]
    if client.supports_extension("size"):  # RFC 1870: octets as sent, CRLF pairs included
        options.insert(0, b"SIZE=%d" % len(data))
    mail = b"MAIL FROM:%s%s\r\n" % (mail_address, b"".join(b" " + o for o in options))
    try:
        if client.supports_extension("pipelining"):
            # The message and its end in one write, not copied into one buffer: a message with
            # an attachment is tens of KB.
            wire = (data, b".\r\n") if plain_lines else (dot_stuffed(data),)
            return await _pipelined(
                client, mail, mail_from=mail_from, recipients=recipients, rcpts=rcpts, wire=wire
            )
        refused = await _one_by_one(client, mail, mail_from, recipients, rcpts)
        reply = await client.data(data, timeout=None)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        # Reset the envelope for the connection's next message, as sendmail does.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await client.rset(timeout=None)
        raise
    return Transmitted(refused, reply)


def _check_supported(client: aiosmtplib.SMTP, mail_options: Sequence[str], data: bytes) -> None:
    """Raise SMTPNotSupported for a message this server cannot take as it is."""
    asked = {option.upper() for option in mail_options}
    if "SMTPUTF8" in asked and not client.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported(
            "the server does not offer SMTPUTF8, which this email's addresses or headers need"
        )
    eight_bit = "BODY=8BITMIME" in asked or not data.isascii()
    if eight_bit and not client.supports_extension("8bitmime"):
        raise aiosmtplib.SMTPNotSupported(
            "the server does not offer 8BITMIME, which this email's 8-bit content needs"
        )


async def _one_by_one(
    client: aiosmtplib.SMTP,
    mail: bytes,
    mail_from: str,
    recipients: Sequence[str],
    rcpts: list[bytes],
) -> dict[str, SMTPResponse]:
    """MAIL FROM, then RCPT TO for each recipient, each waiting for its reply; DATA is next."""
    reply = await client.execute_command(mail.removesuffix(b"\r\n"), timeout=None)
    _check_sender(reply, mail_from)
    replies = [
        await client.execute_command(rcpt.removesuffix(b"\r\n"), timeout=None) for rcpt in rcpts
    ]
    return _refused(recipients, replies)


async def _pipelined(
    client: aiosmtplib.SMTP,
    mail: bytes,
    *,
    mail_from: str,
    recipients: Sequence[str],
    rcpts: list[bytes],
    wire: Sequence[bytes],
) -> Transmitted:
    """MAIL, every RCPT and DATA in one write; the message (if DATA was accepted) in another.

    `wire` is the message as DATA carries it, dot-stuffed and ended, in one or more pieces."""
    tap = ReplyTap.on(client)
    group = [mail, *rcpts, b"DATA\r\n"]
    mail_reply, *rcpt_replies, data_reply = await tap.exchange([b"".join(group)], len(group))
    go_ahead = data_reply.code == SMTPStatus.start_input
    try:
        _check_sender(mail_reply, mail_from)
        refused = _refused(recipients, rcpt_replies)
    except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientsRefused):
        if go_ahead:  # RFC 2920 3.1: the server awaits a message; send an empty one to end it
            await tap.exchange([b".\r\n"], 1)
        raise
    if not go_ahead:
        raise aiosmtplib.SMTPDataError(data_reply.code, data_reply.message)
    (reply,) = await tap.exchange(wire, 1)
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return Transmitted(refused, reply)


def _check_sender(reply: SMTPResponse, mail_from: str) -> None:
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, mail_from)


def _refused(recipients: Sequence[str], replies: list[SMTPResponse]) -> dict[str, SMTPResponse]:
    """The refused recipients and their replies; raises if every one was refused."""
    refused = {
        to: reply
        for to, reply in zip(recipients, replies, strict=True)
        if reply.code not in _RCPT_ACCEPTED
    }
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(r.code, r.message, to) for to, r in refused.items()]
        )
    return refused


def dot_stuffed(content: bytes) -> bytes:
    """The message as DATA carries it, as aiosmtplib writes it: CRLF, dot-stuffed, ended."""
    # Counting is much cheaper than the regular expressions, and a rendered email (CRLF line
    # ends, no line starting with a dot) needs neither.
    line_ends = content.count(b"\r\n")
    if content.count(b"\r") != line_ends or content.count(b"\n") != line_ends:
        content = _LONE_LINE_END.sub(b"\r\n", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    if content.startswith(b".") or b"\n." in content:
        content = _LEADING_DOT.sub(b"..", content)
    return content + b".\r\n"
