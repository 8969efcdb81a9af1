"""One message over one open aiosmtplib session: the worker's only SMTP transaction.

Every email goes through `transmit`: MAIL FROM (with the options the caller asks for and SIZE
where offered), one RCPT TO per recipient, DATA and the message, every reply checked, with the
errors aiosmtplib's `sendmail` raises (after the same RSET). aiosmtplib keeps what it does well:
connecting, TLS, EHLO and AUTH.

Where the server offers PIPELINING (RFC 2920; Postfix's smtpd does by default), the
transaction takes two round trips instead of three plus one per recipient: MAIL, every RCPT and
DATA go out in one write, then the message in another. aiosmtplib reads one reply per command
written, so the replies of such a group are read by a `_ReplyTap` that the session's transport
hands its data to, in front of aiosmtplib's protocol; everything else still goes through
aiosmtplib. Without PIPELINING each command waits for its reply.

A message the server cannot take as it is (SMTPUTF8 asked for but not offered, 8-bit bytes
without 8BITMIME) raises `SMTPNotSupported` before anything is written: it would never go
through, and a 7-bit fallback is the renderer's job.

The caller has the session to itself for the whole transaction (one message per connection at
a time, as in `SmtpPool`) and bounds it with a deadline of its own: no command has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Final, NamedTuple, cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.typing import SMTPStatus

__all__ = ["dot_stuffed", "envelope_address", "greet", "parse_replies", "transmit"]

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
# aiosmtplib's limits for one reply line and one whole reply.
_MAX_LINE: Final = 8192
_MAX_REPLY: Final = 4 * _MAX_LINE
_INVALID: Final = SMTPStatus.invalid_response.value
_CLOSING: Final = SMTPStatus.domain_unavailable.value  # 421: service closing the channel


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
) -> dict[str, SMTPResponse]:
    """Send `data` from `mail_from` to `recipients` over `client`; the refused recipients.

    `mail_options` are MAIL FROM parameters (`BODY=8BITMIME`, `SMTPUTF8`); SIZE is added where
    the server offers it, SMTPUTF8 where an address is not ASCII. Raises, sending nothing,
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
            return await _pipelined(
                client, mail, mail_from=mail_from, recipients=recipients, rcpts=rcpts, content=data
            )
        refused = await _one_by_one(client, mail, mail_from, recipients, rcpts)
        await client.data(data, timeout=None)
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        # Reset the envelope for the connection's next message, as sendmail does.
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
            await client.rset(timeout=None)
        raise
    return refused


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
    content: bytes,
) -> dict[str, SMTPResponse]:
    """MAIL, every RCPT and DATA in one write; the message (if DATA was accepted) in another."""
    tap = _ReplyTap.on(client)
    group = [mail, *rcpts, b"DATA\r\n"]
    mail_reply, *rcpt_replies, data_reply = await tap.exchange(b"".join(group), len(group))
    go_ahead = data_reply.code == SMTPStatus.start_input
    try:
        _check_sender(mail_reply, mail_from)
        refused = _refused(recipients, rcpt_replies)
    except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientsRefused):
        if go_ahead:  # RFC 2920 3.1: the server awaits a message; send an empty one to end it
            await tap.exchange(b".\r\n", 1)
        raise
    if not go_ahead:
        raise aiosmtplib.SMTPDataError(data_reply.code, data_reply.message)
    (reply,) = await tap.exchange(dot_stuffed(content), 1)
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return refused


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


class _Parsed(NamedTuple):
    replies: list[SMTPResponse]
    consumed: int  # bytes of the buffer the complete replies took


def parse_replies(buffer: bytes | bytearray) -> _Parsed:
    """Every complete SMTP reply at the start of `buffer` (multi-line ones joined by LF).

    Raises `SMTPResponseException` for a line without a code or one longer than aiosmtplib
    accepts, as aiosmtplib does.
    """
    replies: list[SMTPResponse] = []
    lines: list[bytes] = []
    offset = consumed = 0
    while (end := buffer.find(b"\n", offset)) != -1:
        line = bytes(buffer[offset : end + 1])
        offset = end + 1
        if len(line) > _MAX_LINE:
            raise aiosmtplib.SMTPResponseException(_INVALID, "Response too long")
        if not line[:3].isdigit():
            text = line.decode("utf-8", errors="ignore")
            raise aiosmtplib.SMTPResponseException(
                _INVALID, f"Malformed SMTP response line: {text}"
            )
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":  # the last line of this reply
            message = b"\n".join(lines).decode("utf-8", "surrogateescape")
            replies.append(SMTPResponse(int(line[:3]), message))
            lines, consumed = [], offset
    return _Parsed(replies, consumed)


class _ReplyTap(asyncio.Protocol):
    """Between a session's transport and aiosmtplib's protocol: collects a group's replies.

    Installed once per connection (`on`). While `exchange` waits, the replies are read here;
    otherwise every event goes on to aiosmtplib's protocol as if the tap were not there.
    """

    def __init__(self, transport: asyncio.WriteTransport, inner: asyncio.Protocol) -> None:
        self._transport = transport
        self._inner = inner
        self._buffer = bytearray()
        self._expected = 0
        self._replies: list[SMTPResponse] = []
        self._waiter: asyncio.Future[list[SMTPResponse]] | None = None

    @classmethod
    def on(cls, client: aiosmtplib.SMTP) -> _ReplyTap:
        """The tap of `client`'s connection, installed on first use."""
        transport = client.transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        current = transport.get_protocol()
        if isinstance(current, _ReplyTap):
            return current
        # aiosmtplib's own transport (TCP or TLS) and protocol (an asyncio.Protocol).
        tap = cls(cast(asyncio.WriteTransport, transport), cast(asyncio.Protocol, current))
        transport.set_protocol(tap)
        return tap

    async def exchange(self, commands: bytes, replies: int) -> list[SMTPResponse]:
        """Write `commands` at once; return the next `replies` replies."""
        if self._waiter is not None:
            raise RuntimeError("another exchange is waiting on this session")
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._waiter = asyncio.get_running_loop().create_future()
        self._expected, self._replies = replies, []
        try:
            self._transport.write(commands)
            return await self._waiter
        finally:
            self._waiter = None
            self._buffer.clear()  # anything beyond the replies awaited was not asked for

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._inner.data_received(data)
            return
        self._buffer += data
        if len(self._buffer) > _MAX_REPLY * self._expected:
            self._fail(aiosmtplib.SMTPResponseException(_INVALID, "Response too long"))
            return
        try:
            replies, consumed = parse_replies(self._buffer)
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
            return
        del self._buffer[:consumed]
        self._replies += replies
        if len(self._replies) >= self._expected:
            waiter.set_result(self._replies[: self._expected])

    def eof_received(self) -> bool | None:
        self._fail(self._closed_by_server("Unexpected EOF received"))
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(self._closed_by_server("Connection lost"))
        self._inner.connection_lost(exc)

    def _closed_by_server(self, what: str) -> Exception:
        """The error for a group cut short: the server's 421 when it said one, else `what`.

        A server that cannot go on answers 421 (RFC 5321 3.8) to the command it is at, often
        MAIL, and closes the connection before the rest of the group gets a reply; one by one,
        that 421 would have been the error.
        """
        closing = next((reply for reply in self._replies if reply.code == _CLOSING), None)
        if closing is not None:
            return aiosmtplib.SMTPResponseException(closing.code, closing.message)
        return aiosmtplib.SMTPServerDisconnected(what)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
            # Marked as retrieved: an exchange cancelled in the same turn never awaits it, and
            # the future would log "exception was never retrieved" (awaiting still raises).
            self._waiter.exception()
