"""The counting SMTP server of the chaos harness: records every copy it accepts, misbehaves on cue.

A small SMTP server of its own (not aiosmtpd) because the faults need control that a library
hides: closing the connection after the final dot *instead of* replying, while counting the
message as received (RFC 1047, the duplicate window 2 of the README), or refusing the greeting.

Each worker process gets its own listening port, so every accepted copy names the process that
sent it; the harness needs that to say which duplicate window a duplicate fell in.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Final

__all__ = ["REJECTED_PREFIX", "Copy", "MailServer"]

# Recipients whose local part starts with this are refused with a 5xx: such emails must end in
# the dead letters, never be delivered. Which emails get one is drawn from the run's seed.
REJECTED_PREFIX: Final = "reject-"

_SEQ = re.compile(rb"\r\nX-Chaos-Seq: (\d+)\r\n")
_MESSAGE_ID = re.compile(rb"\r\nMessage-ID: <([0-9a-f]{32})@")
_LINE_LIMIT: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Copy:
    """One message the server took responsibility for."""

    seq: int | None  # the email's number (X-Chaos-Seq), None when absent
    task_id: str  # from Message-ID: <task_id@domain>
    incarnation: int  # which worker process sent it (by the port it came in on)
    at: float  # time.time() when the final dot arrived
    dropped: bool  # the server closed the connection instead of replying 250


@dataclass
class Behaviour:
    """What the server does right now; the harness changes it while the run goes on."""

    storm_until: float = 0.0  # until then (time.time()), answer 4xx (greeting, RCPT or DATA)
    slow_until: float = 0.0  # until then, wait `slow_data_s` before answering the final dot
    slow_data_s: float = 0.0
    drop_next: int = 0  # close the connection after the final dot of the next N messages


@dataclass
class Tally:
    """What the server did, for the report."""

    storm_replies: int = 0
    slow_replies: int = 0
    drops: int = 0
    rejections: int = 0


@dataclass
class MailServer:
    """Listeners per worker process, and every copy they accepted."""

    rng: random.Random
    behaviour: Behaviour = field(default_factory=Behaviour)
    copies: list[Copy] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    _servers: dict[int, asyncio.Server] = field(default_factory=dict)

    async def listen(self, incarnation: int) -> int:
        """Open a port for worker process `incarnation`; return it."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._session(reader, writer, incarnation)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                pass  # the client went away (or a proxy reset it): nothing to answer
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=_LINE_LIMIT)
        self._servers[incarnation] = server
        port: int = server.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        """Stop every listener (sessions in progress end with their clients)."""
        for server in self._servers.values():
            server.close()

    def _storming(self) -> bool:
        return time.time() < self.behaviour.storm_until

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, incarnation: int
    ) -> None:
        if self._storming() and self.rng.random() < 0.2:
            self.tally.storm_replies += 1
            writer.write(b"421 4.3.2 chaos: service not available, closing\r\n")
            return
        writer.write(b"220 chaos ESMTP\r\n")
        rcpts: list[bytes] = []
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                # Every other worker process is offered PIPELINING, so both of the worker's
                # ways of sending meet the faults (commands are read in order either way).
                extra = b"250-PIPELINING\r\n" if incarnation % 2 else b""
                writer.write(b"250-chaos\r\n250-8BITMIME\r\n%s250 SIZE 33554432\r\n" % extra)
            elif verb == b"HELO" or verb in (b"NOOP", b"RSET"):
                rcpts = [] if verb == b"RSET" else rcpts
                writer.write(b"250 OK\r\n")
            elif verb == b"MAIL":
                rcpts = []
                writer.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                writer.write(self._rcpt_reply(line, rcpts))
            elif verb == b"DATA":
                if not rcpts:
                    writer.write(b"503 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                content = await _read_data(reader)
                reply = await self._end_of_data(content, incarnation)
                if reply is None:
                    writer.transport.abort()  # no 250: the client cannot know we took it
                    return
                writer.write(reply)
                rcpts = []
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 command not implemented\r\n")
            await writer.drain()

    def _rcpt_reply(self, line: bytes, rcpts: list[bytes]) -> bytes:
        address = line[line.find(b"<") + 1 : line.rfind(b">")].lower()
        if address.startswith(REJECTED_PREFIX.encode()):
            self.tally.rejections += 1
            return b"550 5.1.1 chaos: no such user\r\n"
        if self._storming() and self.rng.random() < 0.4:
            self.tally.storm_replies += 1
            return b"450 4.2.1 chaos: mailbox busy, try later\r\n"
        rcpts.append(address)
        return b"250 OK\r\n"

    async def _end_of_data(self, content: bytes, incarnation: int) -> bytes | None:
        """The reply to the final dot; None: close the connection without one."""
        behaviour = self.behaviour
        if self._storming():
            self.tally.storm_replies += 1
            return b"451 4.3.0 chaos: try again later\r\n"
        # The server has the message once the dot is in; a slow reply comes after that moment
        # (the client may give up meanwhile: the duplicate window 2).
        received_at = time.time()
        if received_at < behaviour.slow_until:
            self.tally.slow_replies += 1
            await asyncio.sleep(behaviour.slow_data_s)
        dropped = behaviour.drop_next > 0
        if dropped:
            behaviour.drop_next -= 1
            self.tally.drops += 1
        seq = _SEQ.search(content, 0, 64 * 1024)
        task_id = _MESSAGE_ID.search(content, 0, 64 * 1024)
        self.copies.append(
            Copy(
                seq=int(seq[1]) if seq else None,
                task_id=task_id[1].decode() if task_id else "",
                incarnation=incarnation,
                at=received_at,
                dropped=dropped,
            )
        )
        return None if dropped else b"250 2.0.0 OK queued\r\n"


async def _read_data(reader: asyncio.StreamReader) -> bytes:
    """The message after DATA, up to the lone dot, dot-unstuffed (RFC 5321 4.5.2)."""
    lines = []
    while (line := await reader.readline()) != b".\r\n":
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        lines.append(line[1:] if line.startswith(b"..") else line)
    return b"\r\n" + b"".join(lines)  # a leading CRLF lets the header patterns match line 1
