"""Sending over SMTP through a bounded pool of long-lived aiosmtplib connections.

One aiosmtplib client sends one message at a time, so concurrent sends each take a connection
of their own from the pool; connections are reused across messages (a new TCP + TLS + EHLO +
AUTH per email would cost more than the email) and dropped whenever a send fails, so a client
in an unknown state is never reused.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiosmtplib

from ..settings import WorkerSettings
from .render import Outgoing

__all__ = ["SmtpPool"]


class SmtpPool:
    """Up to `size` SMTP connections, opened on demand and kept open between sends."""

    def __init__(self, settings: WorkerSettings, *, size: int, local_hostname: str) -> None:
        self._settings = settings
        self._local_hostname = local_hostname
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []

    async def send(self, outgoing: Outgoing) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send one message; return the recipients the server refused (empty when none).

        Raises what aiosmtplib raises, or `TimeoutError` when the whole send (including
        connecting) outlasts `SMTP_TIMEOUT_SECONDS`.
        """
        async with self._slots:
            client = self._idle.pop() if self._idle else self._new_client()
            try:
                async with asyncio.timeout(self._settings.smtp_timeout_seconds):
                    if not client.is_connected:
                        await client.connect()
                    refused, _ = await client.send_message(
                        outgoing.message, sender=outgoing.mail_from, recipients=outgoing.recipients
                    )
            except BaseException:
                client.close()
                raise
            if client.is_connected:
                self._idle.append(client)
            return refused

    async def close(self) -> None:
        """Say QUIT on every idle connection (best effort: the server may be gone)."""
        idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(2):
                    await client.quit()
            client.close()

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
