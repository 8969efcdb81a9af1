"""A real SMTP server (aiosmtpd, in its own thread) that tests tell to accept, refuse or stall."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# The server's loop ticks every _TICK_S; a tick more than _STALL_S late records a stall.
_TICK_S = 0.01
_STALL_S = 0.02


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float  # time.time() when the server accepted it
    peer: Any = None  # the client's (host, port): one per SMTP connection
    mail_options: list[str] = field(default_factory=list)  # MAIL FROM parameters (SIZE=...)
    content: bytes = b""  # the message as received, before parsing


@dataclass
class Behaviour:
    """What the server does; tests change it while the server runs."""

    # Reply to RCPT TO for these recipients: always (a string, e.g. "550 5.1.1 no such user"),
    # or once per reply in a list, then accept.
    rcpt_replies: dict[str, str | list[str]] = field(default_factory=dict)
    # Reply to MAIL FROM for the next N transactions, then accept again. After a 421 the server
    # closes the connection, as RFC 5321 3.8 has it.
    mail_replies: list[str] = field(default_factory=list)
    # Reply to the end of DATA for the next N messages, then accept again.
    data_replies: list[str] = field(default_factory=list)
    # Seconds to wait before answering the end of DATA.
    data_delay: float = 0.0
    # Accepted login, when set (AUTH is then offered, also without TLS, on loopback only).
    credentials: tuple[str, str] | None = None
    # Offer PIPELINING in EHLO, as Postfix's smtpd does by default (aiosmtpd reads
    # commands in order, so it serves a pipelined group like any server; it just does not say
    # so by default). The worker then sends in groups (service/worker/transaction.py).
    pipelining: bool = True
    # Offer SMTPUTF8 (RFC 6531) and 8BITMIME (RFC 6152) in EHLO; a test takes them away to play
    # an older server.
    smtputf8: bool = True
    eight_bit_mime: bool = True
    # Keep refused recipients in the envelope, so DATA gets 354 even when every RCPT was
    # refused: the server RFC 2920 section 3.1 tells pipelining clients to expect.
    data_despite_refusals: bool = False
    # Greet new connections with this reply instead of 220, then close them (e.g. a bare
    # "421": RFC 5321 makes the text after the code optional).
    greeting: str | None = None
    # Greet a connection beyond this many open at once with `crowded_greeting` and close it, as
    # Postfix's smtpd does past its client connection limit; the open ones go on working.
    max_connections: int | None = None
    crowded_greeting: str = "421 4.7.0 Error: too many connections"
    # Answer EHLO and HELO with this reply (e.g. "554 5.7.1 not welcome") instead of accepting
    # them: a server that greets, then refuses every session.
    helo_reply: str | None = None
    # Answer "452 4.5.3 Too many recipients" to every RCPT after this many were accepted in
    # one transaction (RFC 5321 4.5.3.1.10: the client sends the others in a later one).
    max_recipients: int | None = None
    # A provider's hidden rate: once this many messages were accepted within the last second,
    # answer the end of DATA with `throttle_reply` instead (Amazon SES's words by default).
    throttle_above: int | None = None
    throttle_reply: str = "454 Throttling failure: Maximum sending rate exceeded."


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        refusal = self.server.behaviour.helo_reply
        if refusal is not None:
            return [refusal]  # no host name recorded: aiosmtpd then refuses MAIL too
        session.host_name = hostname  # this hook's duty, in aiosmtpd
        behaviour = self.server.behaviour
        if behaviour.pipelining:
            responses.insert(-1, "250-PIPELINING")
        offered = {"250-SMTPUTF8": behaviour.smtputf8, "250-8BITMIME": behaviour.eight_bit_mime}
        return [line for line in responses if offered.get(line, True)]

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        refusal = self.server.behaviour.helo_reply
        if refusal is not None:
            return refusal
        session.host_name = hostname  # this hook's duty, in aiosmtpd
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.server.lock:
            replies = self.server.behaviour.mail_replies
            if replies:
                reply = replies.pop(0)
                if reply.startswith("421"):  # the reply, then the end: nothing else is answered
                    server.transport.write(f"{reply}\r\n".encode())
                    server.transport.close()
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        behaviour = self.server.behaviour
        with self.server.lock:
            reply = behaviour.rcpt_replies.get(address)
            if isinstance(reply, list):
                reply = reply.pop(0) if reply else None
        limit = behaviour.max_recipients
        if reply is None and limit is not None and len(envelope.rcpt_tos) >= limit:
            return "452 4.5.3 Too many recipients"
        if reply is not None:
            if self.server.behaviour.data_despite_refusals:
                envelope.rcpt_tos.append(address)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        behaviour = self.server.behaviour
        with self.server.lock:
            self.server.data_started += 1
        if behaviour.data_delay:
            await asyncio.sleep(behaviour.data_delay)
        with self.server.lock:
            if behaviour.data_replies:
                return behaviour.data_replies.pop(0)
            if self.server.over_hidden_rate():
                self.server.throttled.append(time.time())
                return behaviour.throttle_reply
            message = email.message_from_bytes(
                envelope.original_content, policy=email.policy.default
            )
            assert isinstance(message, EmailMessage)
            self.server.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    message,
                    time.time(),
                    session.peer,
                    list(envelope.mail_options),
                    envelope.original_content,
                )
            )
        return "250 OK queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self.server.lock:
            self.server.quits += 1
        return "221 Bye"


class _Session(SMTP):
    """aiosmtpd's session, which can refuse a connection from its greeting on."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._recorder = handler.server
        self._behaviour = handler.server.behaviour

    async def _handle_client(self) -> None:
        server = self._recorder
        with server.lock:
            server.connections += 1
            server.most_connections = max(server.most_connections, server.connections)
            limit = self._behaviour.max_connections
            crowded = limit is not None and server.connections > limit
            if crowded:
                server.crowded += 1
        try:
            greeting = self._behaviour.crowded_greeting if crowded else self._behaviour.greeting
            if greeting is None:
                await super()._handle_client()
                return
            await self.push(greeting)
            if self.transport is not None:
                self.transport.close()
        finally:
            with server.lock:
                server.connections -= 1


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _Session(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """aiosmtpd on 127.0.0.1:`port`, recording every accepted message in `received`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.behaviour = Behaviour()
        self.received: list[Received] = []
        self.data_started = 0
        self.quits = 0
        self.connections = 0  # sessions open now
        self.most_connections = 0  # the most sessions open at once
        self.crowded = 0  # connections refused for `behaviour.max_connections`
        self.throttled: list[float] = []  # when each throttling reply was sent (time.time())
        # (when, seconds late) of each tick of the server's loop that ran late: a starved process
        # timestamps what queued in its socket during a stall all at once, at the stall's end.
        self.stalls: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self._running = False
        # Typed as the base class: the TLS server (tests/servers.py) puts a plain one here.
        self._controller: Controller = _Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=port,
            authenticator=self._authenticate,
            auth_require_tls=False,
            enable_SMTPUTF8=True,
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self.behaviour.credentials
        ok = (
            expected is not None
            and isinstance(auth_data, LoginPassword)
            and (auth_data.login.decode(), auth_data.password.decode()) == expected
        )
        # handled=False: aiosmtpd then answers a failure with 535 itself; its default (True)
        # sends nothing, and the client waits for a reply until it times out.
        return AuthResult(success=ok, handled=False)

    def over_hidden_rate(self) -> bool:
        """Whether `behaviour.throttle_above` messages were accepted in the last second (the
        caller holds `lock`)."""
        limit = self.behaviour.throttle_above
        if limit is None:
            return False
        since = time.time() - 1.0
        recent = 0
        for received in reversed(self.received):
            if received.at < since:
                break
            recent += 1
        return recent >= limit

    def start(self) -> None:
        """Start serving."""
        self._controller.start()
        self._running = True
        self._controller.loop.call_soon_threadsafe(self._tick, time.time())

    def _tick(self, due: float) -> None:
        now = time.time()
        if now - due > _STALL_S:
            self.stalls.append((now, now - due))
        if self._running:
            self._controller.loop.call_later(_TICK_S, self._tick, now + _TICK_S)

    def longest_stall(self, start: float, end: float) -> float:
        """The longest the server's loop was kept from running between `start` and `end`
        (time.time()), in seconds: how far its timestamps may lag the real arrivals then."""
        return max(
            (late for at, late in self.stalls if at >= start and at - late <= end), default=0.0
        )

    def stop(self) -> None:
        """Stop serving (a test may stop it early to simulate an outage)."""
        if self._running:
            self._controller.stop()
            self._running = False

    def task_ids(self) -> list[str]:
        """The task id of every accepted message (from its Message-ID), in arrival order."""
        with self.lock:
            return [str(r.message["Message-ID"]).strip("<>").split("@")[0] for r in self.received]
