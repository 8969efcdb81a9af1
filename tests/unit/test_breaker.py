"""The SMTP breaker's backoff: a table for the pure rule, and the breaker itself in a loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.errors import SmtpUnavailableError
from service.worker.breaker import SAME_OUTAGE_SECONDS, SmtpBreaker, failures_carried


@pytest.mark.parametrize(
    ("failures_at_resume", "since_resume", "carried"),
    [
        (0, None, 0),  # the first outage starts at the first delay
        (3, None, 0),
        # Paused again right after resuming: the resume was wrong; the backoff goes on growing.
        (0, 0.0, 1),
        (4, 0.2, 5),
        (4, SAME_OUTAGE_SECONDS - 0.001, 5),
        # Long after resuming: a new outage, from the first delay again.
        (4, SAME_OUTAGE_SECONDS, 0),
        (4, 3600.0, 0),
    ],
)
def test_failures_carried(
    failures_at_resume: int, since_resume: float | None, carried: int
) -> None:
    assert failures_carried(failures_at_resume, since_resume) == carried


async def test_an_outage_the_probe_cannot_see_still_gets_growing_delays() -> None:
    # Every probe passes, but every resume is followed at once by another pause (sends keep
    # failing for a reason the probe does not meet). The delays must keep growing as for failed
    # probes (0.05 s doubling, jittered in the upper half), not start again at the first one.
    probed: list[float] = []

    async def probe() -> None:
        probed.append(time.monotonic())

    breaker = SmtpBreaker(probe, first_probe_seconds=0.05, max_probe_seconds=10.0)
    running = asyncio.create_task(breaker.run())
    resumed: list[float] = []
    try:
        for _ in range(4):
            breaker.pause("SMTP 554 not welcome")
            await asyncio.wait_for(breaker.wait_until_sending(), 5)
            resumed.append(time.monotonic())
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    paused_at = [0.0, *resumed[:-1]]
    waits = [probe_at - paused for probe_at, paused in zip(probed[1:], paused_at[1:], strict=True)]
    for n, wait in enumerate(waits, start=2):  # the n-th delay: 0.05 * 2**(n-1), half to all
        assert 0.05 * 2 ** (n - 1) * 0.5 <= wait <= 0.05 * 2 ** (n - 1) + 0.1, (n, waits)


async def test_failed_probes_double_the_delay_up_to_the_cap() -> None:
    probed: list[float] = []

    async def probe() -> None:
        probed.append(time.monotonic())
        if len(probed) < 5:
            raise SmtpUnavailableError("SMTP 554 not welcome")

    breaker = SmtpBreaker(probe, first_probe_seconds=0.04, max_probe_seconds=0.1)
    running = asyncio.create_task(breaker.run())
    try:
        paused = time.monotonic()
        breaker.pause("SMTP 554 not welcome")
        await asyncio.wait_for(breaker.wait_until_sending(), 5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    waits = [b - a for a, b in zip([paused, *probed], probed, strict=False)]
    nominal = [0.04, 0.08, 0.1, 0.1, 0.1]  # doubling, capped
    assert len(waits) == 5
    for wait, ceiling in zip(waits, nominal, strict=True):
        assert ceiling * 0.5 <= wait <= ceiling + 0.1, waits
