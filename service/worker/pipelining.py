"""Reading the replies of a pipelined group (RFC 2920) under aiosmtplib's session.

aiosmtplib reads one reply per command it writes itself. The transaction (`transaction.py`)
writes MAIL, every RCPT and DATA at once, so a `ReplyTap`, put between the session's transport
and aiosmtplib's protocol, collects the replies of such a group (`parse_replies`); at any other
time it hands every event on to aiosmtplib's protocol as if it were not there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, NamedTuple, cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.typing import SMTPStatus

__all__ = ["ReplyTap", "parse_replies"]

# aiosmtplib's limits for one reply line and one whole reply.
_MAX_LINE: Final = 8192
_MAX_REPLY: Final = 4 * _MAX_LINE
_INVALID: Final = SMTPStatus.invalid_response.value
_CLOSING: Final = SMTPStatus.domain_unavailable.value  # 421: service closing the channel


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
    # The last item of the split is a line not yet complete, or empty.
    for line in bytes(buffer).split(b"\n")[:-1]:
        offset += len(line) + 1
        if len(line) >= _MAX_LINE:  # with its LF, longer than aiosmtplib reads
            raise aiosmtplib.SMTPResponseException(_INVALID, "Response too long")
        code = line[:3]
        if len(code) != 3 or not code.isdigit():
            text = line.decode("utf-8", errors="ignore")
            raise aiosmtplib.SMTPResponseException(
                _INVALID, f"Malformed SMTP response line: {text}"
            )
        lines.append(line[4:].strip(b" \t\r"))
        if line[3:4] != b"-":  # the last line of this reply
            message = lines[0] if len(lines) == 1 else b"\n".join(lines)
            replies.append(SMTPResponse(int(code), message.decode("utf-8", "surrogateescape")))
            lines, consumed = [], offset
    return _Parsed(replies, consumed)


class ReplyTap(asyncio.Protocol):
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
    def on(cls, client: aiosmtplib.SMTP) -> ReplyTap:
        """The tap of `client`'s connection, installed on first use."""
        transport = client.transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        current = transport.get_protocol()
        if isinstance(current, ReplyTap):
            return current
        # aiosmtplib's own transport (TCP or TLS) and protocol (an asyncio.Protocol).
        tap = cls(cast(asyncio.WriteTransport, transport), cast(asyncio.Protocol, current))
        transport.set_protocol(tap)
        return tap

    async def exchange(self, chunks: Sequence[bytes], replies: int) -> list[SMTPResponse]:
        """Write `chunks` at once (one system call where the transport can); return the next
        `replies` replies."""
        if self._waiter is not None:
            raise RuntimeError("another exchange is waiting on this session")
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._waiter = asyncio.get_running_loop().create_future()
        self._expected, self._replies = replies, []
        try:
            self._transport.writelines(chunks)
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
