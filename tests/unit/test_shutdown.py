"""cancel_and_wait: a task that loses one cancellation is still stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time

from service.worker.shutdown import cancel_and_wait


async def _swallows_one_cancellation(started: asyncio.Event) -> None:
    started.set()
    # What Python 3.11's wait_for does when its call finished in the same loop turn:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)
    await asyncio.sleep(60)


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    started = asyncio.Event()
    stubborn = asyncio.create_task(_swallows_one_cancellation(started))
    await started.wait()

    began = time.monotonic()
    await cancel_and_wait([stubborn], "test")

    assert stubborn.cancelled()
    assert time.monotonic() - began < 5


async def test_errors_stay_on_their_tasks_and_finished_tasks_are_left_alone() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failing = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0, result="done"))
    await asyncio.sleep(0.01)

    await cancel_and_wait([failing, finished], "test")

    assert isinstance(failing.exception(), ValueError)
    assert finished.result() == "done"
