"""Sending over SMTP through a bounded pool of long-lived aiosmtplib connections.

One aiosmtplib client sends one message at a time, so concurrent sends each take a connection
of their own from the pool (as many as `WORKER_CONCURRENCY`); connections are reused across
messages (a new TCP + TLS + EHLO + AUTH per email would cost more than the email), checked with
NOOP when they were idle a while, retired with QUIT after `SMTP_MAX_MESSAGES_PER_CONNECTION`
messages when that is set (some servers limit it), and dropped whenever a send fails (421, a
disconnect, a timeout...), so a client in an unknown state is never reused. Every email goes
out through the worker's one transaction (`transaction.py`).

A send returns the project's own `SendResult` (`smtp_result.py`), never an aiosmtplib
exception. Failing to open a session (connection refused; greeting, EHLO, TLS or AUTH
refused) is an `UNAVAILABLE` failure, distinct from a message's own failure: the worker then
pauses rather than charging the email an attempt. The breaker's probe opens its session the same
way, so it passes only where a send could reach MAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Final

import aiosmtplib
import structlog

from ..errors import SmtpUnavailableError
from ..settings import WorkerSettings
from .connections import (
    HOLD_SECONDS,
    IDLE_CLOSE_SECONDS,
    Hold,
    connection_limit,
    hold_after_opening,
    hold_after_refusal,
    idle_to_close,
    should_open,
)
from .render import Outgoing
from .smtp_result import (
    Answered,
    FailureKind,
    Reply,
    SendFailure,
    SendResult,
    pushes_back,
    read_failure,
    session_failure,
)
from .transaction import Transmitted, greet, transmit

__all__ = ["SmtpPool"]

log = structlog.get_logger("service.worker")
# A connection idle longer than this is checked with NOOP before it carries a message.
_IDLE_CHECK_AFTER_SECONDS: Final = 5.0
# How long a QUIT may take when a connection is retired or the pool closes.
_QUIT_SECONDS: Final = 2.0


@dataclass(slots=True)
class _Connection:
    """A pooled client, how many messages it carried, and when it was last used (monotonic)."""

    client: aiosmtplib.SMTP
    sent: int = 0
    last_used: float = 0.0


class SmtpPool:
    """Up to `size` SMTP connections, opened on demand and kept open between sends.

    How many may be open at a time (`capacity`) follows the server (`connections.py`).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        size: int,
        local_hostname: str,
        idle_close_seconds: float = IDLE_CLOSE_SECONDS,
    ) -> None:
        self._settings = settings
        self._idle_close_seconds = idle_close_seconds
        self._local_hostname = local_hostname
        self._size = size
        self._slots = asyncio.Semaphore(size)
        self._max_messages = settings.smtp_max_messages_per_connection
        # Idle connections, the most recently used last.
        self._idle: list[_Connection] = []
        # Connections open or opening, idle or carrying a message.
        self._open = 0
        # Set whenever a connection comes back or closes: a send waiting for one looks again.
        self._returned = asyncio.Event()
        self._hold: Hold | None = None
        self._trim: asyncio.TimerHandle | None = None
        # QUITs of retired connections still running (close() waits for them).
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def capacity(self) -> int:
        """The connections the pool may have open now: `size`, less while the server refuses
        more. The worker starts no more sends than this."""
        return connection_limit(self._size, self._hold, time.monotonic())

    @property
    def open_connections(self) -> int:
        """Connections open or opening, idle or carrying a message."""
        return self._open

    async def send(self, outgoing: Outgoing) -> SendResult:
        """Send one message within `SMTP_TIMEOUT_SECONDS`; say how it went.

        The deadline starts once a connection is free or may be opened: waiting for one while
        the server holds the pool below `size` is not the send's time.
        """
        async with self._slots:
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(None) as deadline:
                    try:
                        connection = await self._checkout(deadline)
                    except Exception as exc:  # noqa: BLE001 - no session: the server is unusable
                        return SendFailure(FailureKind.UNAVAILABLE, self._describe(exc))
                    sent = await _transmit(connection.client, outgoing)
            except TimeoutError:
                if connection is None:  # the deadline passed while the session was still opening
                    return SendFailure(FailureKind.UNAVAILABLE, self._describe(TimeoutError()))
                self._drop(connection)
                return SendFailure(FailureKind.TIMEOUT, "SMTP send timed out")
            except aiosmtplib.SMTPRecipientsRefused as exc:
                if connection is not None:
                    self._drop(connection)
                return Answered({r.recipient: Reply(r.code, r.message) for r in exc.recipients})
            except Exception as exc:  # noqa: BLE001 - every other failure is read in one place
                if connection is not None:
                    self._drop(connection)
                return read_failure(exc)
            except BaseException:
                if connection is not None:
                    self._drop(connection)
                raise
            self._checkin(connection)
            refused = {to: Reply(r.code, r.message) for to, r in sent.refused.items()}
            return Answered(refused, Reply(sent.reply.code, sent.reply.message))

    async def probe(self) -> None:
        """Open one session as a send does, then QUIT; raise `SmtpUnavailableError` if it fails.

        A connection alone proves little: a server may greet and then refuse EHLO, TLS or AUTH,
        and every send would fail where this passed.
        """
        try:
            async with asyncio.timeout(self._settings.smtp_timeout_seconds):
                client = await self._open_session()
        except Exception as exc:
            raise SmtpUnavailableError(self._describe(exc)) from exc
        await _quit(client)

    @property
    def idle_connections(self) -> int:
        """Connections open and waiting for a message."""
        return len(self._idle)

    async def close(self) -> None:
        """Say QUIT on every idle connection, all at once (best effort: the server may be gone).

        Called once sending has stopped; connections still retiring finish their QUIT too. Each
        connection is closed at the end, also when this is cancelled.
        """
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        await asyncio.gather(*self._retiring, *(_quit(c.client) for c in idle))

    def _checkin(self, connection: _Connection) -> None:
        """Back to the pool after a successful send, or retired if it carried its quota."""
        connection.sent += 1
        connection.last_used = time.monotonic()
        if not connection.client.is_connected:
            self._drop(connection)
            return
        if self._max_messages and connection.sent >= self._max_messages:
            self._retire(connection)
            return
        self._idle.append(connection)
        self._returned.set()
        if self._trim is None:
            self._schedule_trim(self._idle_close_seconds)

    def _drop(self, connection: _Connection) -> None:
        """Close a connection in an unknown state (a failed send): it is never reused."""
        connection.client.close()
        self._open -= 1
        self._returned.set()

    def _retire(self, connection: _Connection) -> None:
        """QUIT off the send's path: the email's settle does not wait for it."""
        self._open -= 1
        self._returned.set()
        retiring = asyncio.create_task(_quit(connection.client), name="smtp-quit")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    def _schedule_trim(self, delay: float) -> None:
        self._trim = asyncio.get_running_loop().call_later(delay, self._close_idle)

    def _close_idle(self) -> None:
        """Close the connections idle too long (`connections.py`); look again when the next
        one will be."""
        self._trim = None
        now = time.monotonic()
        last_used = [c.last_used for c in self._idle]
        stale = idle_to_close(last_used, now, keep_seconds=self._idle_close_seconds)
        for connection in self._idle[:stale]:
            self._retire(connection)
        del self._idle[:stale]
        if self._idle:
            self._schedule_trim(self._idle[0].last_used + self._idle_close_seconds - now)

    async def _checkout(self, deadline: asyncio.Timeout) -> _Connection:
        """A connected client: a healthy idle one, else a new connection when the capacity
        allows, else the next one to come back. `deadline` starts once there is one to try."""
        while True:
            if self._idle:
                _start(deadline, self._settings.smtp_timeout_seconds)
                connection = await self._healthy_idle()
                if connection is not None:
                    return connection
                continue
            if should_open(idle=0, open_now=self._open, limit=self.capacity):
                _start(deadline, self._settings.smtp_timeout_seconds)
                self._open += 1
                try:
                    client = await self._open_session()
                except BaseException as exc:
                    self._open -= 1
                    self._returned.set()
                    if not isinstance(exc, Exception) or not self._hold_after(exc):
                        raise
                    continue
                now = time.monotonic()
                self._hold = hold_after_opening(self._hold, self._open, self._size, now)
                return _Connection(client)
            deadline.reschedule(None)  # waiting for a connection is not the send's time
            self._returned.clear()
            await self._returned.wait()

    async def _healthy_idle(self) -> _Connection | None:
        """The most recently used idle connection if it still works, else None (closed)."""
        connection = self._idle.pop()
        client = connection.client
        if not client.is_connected:
            self._drop(connection)
            return None
        if time.monotonic() - connection.last_used < _IDLE_CHECK_AFTER_SECONDS:
            return connection
        # Servers drop idle sessions (Postfix after 300 s): find out before sending on it,
        # so a stale connection costs a NOOP instead of a failed attempt.
        try:
            await client.noop()
        except (aiosmtplib.SMTPException, OSError):
            self._drop(connection)
            return None
        except BaseException:  # the deadline or a cancellation: the connection is not back
            self._drop(connection)
            raise
        return connection

    def _hold_after(self, exc: Exception) -> bool:
        """Whether a refused new session holds the pool at the connections it has (the send
        then waits for one of them) rather than failing: see `connections.py`."""
        hold = hold_after_refusal(self._open, time.monotonic()) if pushes_back(exc) else None
        if hold is None:
            return False
        if self._hold is None or self._hold.until <= time.monotonic():
            log.warning(
                "smtp_connections_held",
                connections=hold.connections,
                seconds=HOLD_SECONDS,
                reason=self._describe(exc),
            )
        self._hold = hold
        return True

    async def _open_session(self) -> aiosmtplib.SMTP:
        """A new session, ready for MAIL: everything a send needs before it, as configured.

        `connect` reads the greeting and does TLS, EHLO + STARTTLS and AUTH where they are
        configured; `greet` says EHLO (or HELO) where none of them needed it.
        """
        client = self._new_client()
        try:
            await client.connect()
            await greet(client)
        except BaseException:
            client.close()
            raise
        return client

    def _describe(self, exc: BaseException) -> str:
        """Why no session could be opened, without any credential."""
        return session_failure(
            exc, f"{self._settings.smtp_host}:{self._settings.smtp_port_or_default}"
        )

    def _new_client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        security = settings.smtp_security
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port_or_default,
            username=settings.smtp_username,
            password=password,
            use_tls=security == "tls",
            # Never opportunistic: with start_tls=None a stripped EHLO would downgrade the
            # session and the password would travel in clear.
            start_tls=security == "starttls",
            validate_certs=True,
            timeout=settings.smtp_timeout_seconds,
            local_hostname=self._local_hostname,
        )


def _start(deadline: asyncio.Timeout, seconds: float) -> None:
    """Start `deadline` (`seconds` from now) unless it runs already."""
    if deadline.when() is None:
        deadline.reschedule(asyncio.get_running_loop().time() + seconds)


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT, then close, whatever the server answers (or if it does not, or we are cancelled)."""
    try:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(_QUIT_SECONDS):
                await client.quit()
    finally:
        client.close()


async def _transmit(client: aiosmtplib.SMTP, outgoing: Outgoing) -> Transmitted:
    """One message over `client`; what the server answered."""
    eight_bit = client.supports_extension("8bitmime")
    options = [o for o, on in (("BODY=8BITMIME", eight_bit), ("SMTPUTF8", outgoing.smtputf8)) if on]
    return await transmit(
        client,
        outgoing.mail_from,
        outgoing.recipients,
        outgoing.data(eightbit=eight_bit),
        mail_options=options,
        plain_lines=outgoing.plain_lines(eightbit=eight_bit),
    )
