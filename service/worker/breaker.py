"""The SMTP circuit breaker: pause intake while the SMTP server is unusable.

When a session cannot be opened (server down, connection refused, EHLO, TLS or AUTH failing),
every other email would fail the same way. Sending on would turn a backlog of good emails into
retries, and the retries into dead letters. Instead the worker pauses: its intake waits, and the
breaker probes the server with growing delays until a session opens again, then resumes.

The probe opens a session as a send does (`SmtpPool.probe`), so a server that is unusable for
sends fails it too. Should a send still find the server unusable right after a probe passed (a
cause the probe does not meet), the pause that follows is the same outage: its delays go on
growing from where they were (`failures_carried`) instead of starting again at the first one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from ..errors import SmtpUnavailableError
from .backoff import backoff_delay

__all__ = ["SAME_OUTAGE_SECONDS", "SmtpBreaker", "failures_carried"]

log = structlog.get_logger("service.worker")

_FIRST_PROBE_SECONDS: Final = 1.0
_MAX_PROBE_SECONDS: Final = 30.0
# A pause this soon after resuming is the last outage come back: twice the longest delay
# between probes, so a server that keeps passing the probe and failing the sends is met with
# delays that keep growing up to the cap and stay there.
SAME_OUTAGE_SECONDS: Final = 2 * _MAX_PROBE_SECONDS


def failures_carried(failures_at_resume: int, since_resume: float | None) -> int:
    """How many failed probes a new pause counts from.

    `failures_at_resume` is how many probes had failed when the breaker last resumed,
    `since_resume` the seconds since (None if it never paused before). A pause within
    `SAME_OUTAGE_SECONDS` of resuming means the probe that passed was wrong: it counts as one
    more failure, and the next delay is the one after the last. A later pause is a new outage.
    """
    if since_resume is None or since_resume >= SAME_OUTAGE_SECONDS:
        return 0
    return failures_at_resume + 1


class SmtpBreaker:
    """Sending, or paused while `probe` is retried until it succeeds."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        first_probe_seconds: float = _FIRST_PROBE_SECONDS,
        max_probe_seconds: float = _MAX_PROBE_SECONDS,
    ) -> None:
        self._probe = probe
        self._first_probe_seconds = first_probe_seconds
        self._max_probe_seconds = max_probe_seconds
        self._sending = asyncio.Event()
        self._sending.set()
        self._paused = asyncio.Event()
        self._paused_at = 0.0
        # Failed probes of the current (or last) outage, and when it last ended (monotonic).
        self._failures = 0
        self._resumed_at: float | None = None

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
        since_resume = None if self._resumed_at is None else self._paused_at - self._resumed_at
        self._failures = failures_carried(self._failures, since_resume)
        # `failures` only when the last outage came back: its count goes on from there.
        carried = {"failures": self._failures} if self._failures else {}
        log.error(
            "smtp_unavailable", reason=reason, action="intake paused; probing the server", **carried
        )

    async def wait_until_sending(self) -> None:
        """Return once sending may go on."""
        await self._sending.wait()

    async def run(self) -> None:
        """Probe while paused, resume on the first success; forever (until cancelled)."""
        while True:
            await self._paused.wait()
            probes = 0
            while True:
                delay = backoff_delay(
                    self._failures + 1,
                    first=self._first_probe_seconds,
                    cap=self._max_probe_seconds,
                )
                await asyncio.sleep(delay)
                probes += 1
                try:
                    await self._probe()
                except SmtpUnavailableError as exc:
                    self._failures += 1
                    log.warning("smtp_probe_failed", reason=exc.reason, failures=self._failures)
                    continue
                break
            self._paused.clear()
            self._resumed_at = time.monotonic()
            self._sending.set()
            outage = self._resumed_at - self._paused_at
            log.info("smtp_available", paused_s=round(outage, 2), probes=probes)
