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
from aiosmtplib.email import flatten_message

from ..errors import SmtpUnavailableError
from ..settings import WorkerSettings
from .render import Outgoing
from .smtp_result import (
    Answered,
    FailureKind,
    Reply,
    SendFailure,
    SendResult,
    read_failure,
    session_failure,
)
from .transaction import greet, transmit

__all__ = ["SmtpPool"]

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
    """Up to `size` SMTP connections, opened on demand and kept open between sends."""

    def __init__(self, settings: WorkerSettings, *, size: int, local_hostname: str) -> None:
        self._settings = settings
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(size)
        self._max_messages = settings.smtp_max_messages_per_connection
        # Idle connections, the most recently used last.
        self._idle: list[_Connection] = []
        # QUITs of retired connections still running (close() waits for them).
        self._retiring: set[asyncio.Task[None]] = set()

    async def send(self, outgoing: Outgoing) -> SendResult:
        """Send one message within `SMTP_TIMEOUT_SECONDS`; say how it went."""
        async with self._slots:
            connection: _Connection | None = None
            try:
                async with asyncio.timeout(self._settings.smtp_timeout_seconds):
                    try:
                        connection = await self._checkout()
                    except Exception as exc:  # noqa: BLE001 - no session: the server is unusable
                        return SendFailure(FailureKind.UNAVAILABLE, self._describe(exc))
                    refused = await _transmit(connection.client, outgoing)
            except TimeoutError:
                if connection is None:  # the deadline passed while the session was still opening
                    return SendFailure(FailureKind.UNAVAILABLE, self._describe(TimeoutError()))
                connection.client.close()
                return SendFailure(FailureKind.TIMEOUT, "SMTP send timed out")
            except aiosmtplib.SMTPRecipientsRefused as exc:
                if connection is not None:
                    connection.client.close()
                return Answered({r.recipient: Reply(r.code, r.message) for r in exc.recipients})
            except Exception as exc:  # noqa: BLE001 - every other failure is read in one place
                if connection is not None:
                    connection.client.close()
                return read_failure(exc)
            except BaseException:
                if connection is not None:
                    connection.client.close()
                raise
            self._checkin(connection)
            return Answered({to: Reply(r.code, r.message) for to, r in refused.items()})

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
        idle, self._idle = self._idle, []
        await asyncio.gather(*self._retiring, *(_quit(c.client) for c in idle))

    def _checkin(self, connection: _Connection) -> None:
        """Back to the pool after a successful send, or retired if it carried its quota."""
        connection.sent += 1
        connection.last_used = time.monotonic()
        if not connection.client.is_connected:
            return
        if self._max_messages and connection.sent >= self._max_messages:
            # QUIT off the send's path: the email's settle does not wait for it.
            retiring = asyncio.create_task(_quit(connection.client), name="smtp-quit")
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
            return
        self._idle.append(connection)

    async def _checkout(self) -> _Connection:
        """A connected client: a healthy idle one, else a new connection."""
        while self._idle:
            connection = self._idle.pop()
            client = connection.client
            if not client.is_connected:
                continue
            if time.monotonic() - connection.last_used < _IDLE_CHECK_AFTER_SECONDS:
                return connection
            # Servers drop idle sessions (Postfix after 300 s): find out before sending on it,
            # so a stale connection costs a NOOP instead of a failed attempt.
            try:
                await client.noop()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
                continue
            return connection
        return _Connection(await self._open_session())

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


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT, then close, whatever the server answers (or if it does not, or we are cancelled)."""
    try:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(_QUIT_SECONDS):
                await client.quit()
    finally:
        client.close()


async def _transmit(
    client: aiosmtplib.SMTP, outgoing: Outgoing
) -> dict[str, aiosmtplib.SMTPResponse]:
    """One message over `client`; the recipients the server refused."""
    utf8 = not (outgoing.mail_from.isascii() and all(to.isascii() for to in outgoing.recipients))
    eight_bit = client.supports_extension("8bitmime")
    data = outgoing.content
    if not isinstance(data, bytes):  # headers in UTF-8 only where the addresses need SMTPUTF8
        data = flatten_message(data, utf8=utf8, cte_type="8bit" if eight_bit else "7bit")
    options = [o for o, on in (("BODY=8BITMIME", eight_bit), ("SMTPUTF8", utf8)) if on]
    return await transmit(
        client, outgoing.mail_from, outgoing.recipients, data, mail_options=options
    )
