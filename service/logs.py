"""Structured logging: one JSON object per line (or readable console lines), for us and for
every library that logs through the standard `logging` module.

No traceback, in either format, shows local variables: a frame's locals can hold a password
(redis-py's AUTH arguments, a URL with credentials).
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

__all__ = ["configure_logging"]


def configure_logging(*, level: str, json: bool) -> None:
    """Route structlog and stdlib logging to stdout, as JSON lines when `json` is true."""
    level_number = logging.getLevelNamesMapping()[level]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
