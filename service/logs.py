"""Structured logging: one JSON object per line (or readable console lines), for us and for
every library that logs through the standard `logging` module.

No traceback, in either format, shows local variables: a frame's locals can hold a password
(redis-py's AUTH arguments, a URL with credentials).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

__all__ = ["configure_logging", "iso_utc"]


def configure_logging(*, level: str, json: bool) -> None:
    """Route structlog and stdlib logging to stdout, as JSON lines when `json` is true."""
    level_number = logging.getLevelNamesMapping()[level]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _stamp_utc,
    ]
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        logger_factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(
            sys.stdout.buffer
        )
    else:
        renderer = _console_renderer()
        logger_factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(shared, level_number, json=json)


class _IsoUtc:
    """The time as structlog's `TimeStamper(fmt="iso", utc=True)` writes it, e.g.
    `2026-12-02T05:00:01.250000Z`, with the date and time of day formatted once per second:
    building a datetime for every line was a third of the cost of a worker's line per email."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        # One attribute, replaced whole: a thread logging meanwhile sees a matching pair.
        self._last = (-1, "")

    def __call__(self, nanoseconds: int) -> str:
        """The instant `nanoseconds` after the epoch, to the microsecond (rounded down)."""
        second, micros = divmod(nanoseconds // 1000, 1_000_000)
        last_second, prefix = self._last
        if second != last_second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._last = (second, prefix)
        # As datetime.isoformat: no fraction at all on a whole second.
        return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


iso_utc = _IsoUtc()


def _stamp_utc(_logger: Any, _method: str, event_dict: Any) -> Any:
    event_dict["timestamp"] = iso_utc(time.time_ns())
    return event_dict


def _route_stdlib_logging(
    shared: list[structlog.typing.Processor], level: int, *, json: bool
) -> None:
    """Render records of other libraries (asyncio, redis, aiosmtplib) like our own lines."""
    final: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else _console_renderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, final],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    # Left to its default, ConsoleRenderer formats tracebacks with rich, or better-exceptions,
    # whichever is importable, and both print every frame's local variables. The plain
    # formatter prints the same traceback as Python does, whatever is installed.
    return structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
