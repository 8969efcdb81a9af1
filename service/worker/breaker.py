"""The SMTP circuit breaker: pause intake while the SMTP server is unusable.

When a session cannot be opened (server down, connection refused, TLS or AUTH failing), every
other email would fail the same way. Sending on would turn a backlog of good emails into
retries, and the retries into dead letters. Instead the worker pauses: its intake waits, and the
breaker probes the server with growing delays until a session opens again, then resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from ..errors import SmtpUnavailableError
from .backoff import backoff_delay

__all__ = ["SmtpBreaker"]

log = structlog.get_logger("service.worker")

_FIRST_PROBE_SECONDS: Final = 1.0
_MAX_PROBE_SECONDS: Final = 30.0


class SmtpBreaker:
    """Sending, or paused while `probe` is retried until it succeeds."""

    def __init__(self, probe: Callable[[], Awaitable[None]]) -> None:
        self._probe = probe
        self._sending = asyncio.Event()
        self._sending.set()
        self._paused = asyncio.Event()
        self._paused_at = 0.0

    @property
    def is_paused(self) -> bool:
        """Whether sending is paused."""
        return not self._sending.is_set()

    def pause(self, reason: str) -> None:
        """Pause sending (unless paused already): the server is unusable for `reason`."""
        if self.is_paused:
            return
        self._sending.clear()
        self._paused.set()
        self._paused_at = time.monotonic()
        log.error("smtp_unavailable", reason=reason, action="intake paused; probing the server")

    async def wait_until_sending(self) -> None:
        """Return once sending may go on."""
        await self._sending.wait()

    async def run(self) -> None:
        """Probe while paused, resume on the first success; forever (until cancelled)."""
        while True:
            await self._paused.wait()
            failures = 0
            while True:
                delay = backoff_delay(
                    failures + 1, first=_FIRST_PROBE_SECONDS, cap=_MAX_PROBE_SECONDS
                )
                await asyncio.sleep(delay)
                try:
                    await self._probe()
                except SmtpUnavailableError as exc:
                    failures += 1
                    log.warning("smtp_probe_failed", reason=exc.reason, failures=failures)
                    continue
                break
            self._paused.clear()
            self._sending.set()
            outage = time.monotonic() - self._paused_at
            log.info("smtp_available", paused_s=round(outage, 2), probes=failures + 1)
