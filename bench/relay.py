"""The SMTP server a `bench.mix` sender talks to: a counting smtp-sink on loopback, alone or
behind `bench.latency_proxy` (a relay across a network)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from service.local.redis_server import free_port

from .endtoend import Lab
from .sinks import SinkProcess, start_sink

__all__ = ["relay"]

_REPOSITORY: Final = Path(__file__).resolve().parent.parent


@contextmanager
def relay(
    lab: Lab, milestones: list[int], delay_ms: float, *, dump: Path | None = None
) -> Iterator[tuple[SinkProcess, int]]:
    """A counting smtp-sink (writing each message into `dump` when given), and the port to send
    to: the sink's, or a latency proxy's adding `delay_ms` each way."""
    sink = start_sink(lab.children, "smtp-sink", lab.workdir, milestones, dump=dump)
    proxy = None
    try:
        port = sink.port
        if delay_ms:
            port = free_port()
            proxy = lab.children.spawn(
                [sys.executable, "-m", "bench.latency_proxy", "--port", str(port),
                 "--target", str(sink.port), "--delay-ms", str(delay_ms)],
                env={**os.environ, "PYTHONPATH": str(_REPOSITORY)},
            )  # fmt: skip
            _wait_for_port(port)
        yield sink, port
    finally:
        if proxy is not None:
            lab.children.stop(proxy)
        lab.children.stop(sink.process)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")
