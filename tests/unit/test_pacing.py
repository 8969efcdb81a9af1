"""A delivery waiting for its slot: it sends when the slot comes, and gives up at once when
the worker is asked to stop (the store is never called: no Redis is needed)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from service.keys import QueueKeys
from service.settings import WorkerSettings
from service.store import QueueStore
from service.worker.metrics import WorkerMetrics
from service.worker.pacing import Admission, Pacer


def _pacer(stopping: asyncio.Event, **settings: str) -> Pacer:
    worker_settings = WorkerSettings.model_validate(
        {"mail_from": "s@example.com", "smtp_rate_limit": "10/s", **settings}
    )
    store = QueueStore(Redis(), QueueKeys("emails"))  # never connects: nothing here asks it
    return Pacer(worker_settings, store, WorkerMetrics("emails"), stopping=stopping)


@pytest.mark.parametrize(
    ("delay_s", "stop_after_s", "sends", "waited_s"),
    [
        (0.0, None, True, 0.0),  # its slot has come
        (0.2, None, True, 0.2),  # waits for it
        (5.0, 0.1, False, 0.1),  # a stop ends the wait at once
        (0.0, 0.0, False, 0.0),  # stopping already: nothing more is sent
    ],
)
async def test_wait_turn(
    delay_s: float, stop_after_s: float | None, sends: bool, waited_s: float
) -> None:
    stopping = asyncio.Event()
    pacer = _pacer(stopping)
    if stop_after_s == 0.0:
        stopping.set()
    elif stop_after_s is not None:
        asyncio.get_running_loop().call_later(stop_after_s, stopping.set)
    started = time.monotonic()
    assert await pacer.wait_turn(Admission(started + delay_s)) is sends
    elapsed = time.monotonic() - started
    # Not early; and a stop does not wait out the 5 s (loose: the machine may be loaded).
    assert waited_s - 0.01 <= elapsed < waited_s + 1.0


async def test_without_limits_the_pacer_reads_what_is_free_and_admits_all() -> None:
    pacer = _pacer(asyncio.Event(), smtp_rate_limit="")
    assert not pacer.active
    assert await pacer.wait_to_read(7) == 7
    assert await pacer.admit([]) == []
