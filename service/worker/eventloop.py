"""The event loop the worker runs on: uvloop where it is installed, else asyncio's own.

The worker is CPU-bound on a fast SMTP server, and a large share of that CPU is the event loop
itself (socket writes and reads for every SMTP exchange and Redis round trip): uvloop, the
libuv-based loop uvicorn also uses, makes those cheaper (docs/performance.md has the figures).
`WORKER_EVENT_LOOP=asyncio` is the way back should an environment misbehave with it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EventLoopChoice", "loop_name", "run"]

T = TypeVar("T")
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def loop_name(choice: EventLoopChoice) -> str:
    """The loop `run` will use for `choice` ("uvloop" or "asyncio")."""
    if choice == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return choice


def run(main: Coroutine[Any, Any, T], *, choice: EventLoopChoice = "auto") -> T:
    """Run `main` to completion on the chosen loop, like `asyncio.run`."""
    if loop_name(choice) == "uvloop":
        import uvloop  # noqa: PLC0415 - optional: only where it is installed and chosen

        return uvloop.run(main)
    return asyncio.run(main)
