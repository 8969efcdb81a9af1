"""A TCP fault proxy on loopback: one listening port forwarding to one upstream, with faults.

The chaos harness puts one in front of Redis and one in front of the SMTP server for every
worker process, so a fault can cut one worker off while the others carry on. Modes:

- `pass`: bytes flow both ways as they come;
- `latency`: every chunk waits `latency_s` before it is forwarded (order is kept);
- `stall`: bytes are held (not lost) until the mode changes, as in a congested link;
- `blackhole`: bytes are dropped silently and new connections are accepted but never answered;
  when the blackhole ends, the connections that lost bytes are reset (their streams are torn);
- `reset`: every open connection is reset (RST) at once, and new ones are reset on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "latency", "stall", "blackhole", "reset"]

_CHUNK: Final = 256 * 1024
_UPSTREAM_CONNECT_SECONDS: Final = 5.0


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    torn: bool = False  # lost bytes in a blackhole: its stream can never be right again
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream_port`; `set_mode` injects a fault."""

    def __init__(self, upstream_port: int, name: str) -> None:
        self.name = name
        self.upstream_port = upstream_port
        self.port = 0
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self._changed = asyncio.Event()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on a free loopback port (`self.port`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and reset every connection still open."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.reset()
            for pump in connection.pumps:
                pump.cancel()
        self._connections.clear()
        self._notify()

    def set_mode(self, mode: Mode, latency_s: float = 0.0) -> None:
        """Switch to `mode`; connections in flight feel it from their next chunk."""
        leaving_blackhole = self.mode == "blackhole" and mode != "blackhole"
        self.mode, self.latency_s = mode, latency_s
        if mode == "reset" or leaving_blackhole:
            for connection in list(self._connections):
                if mode == "reset" or connection.torn:
                    connection.reset()
        self._notify()

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _reset(writer)
            return
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            while self.mode == "blackhole":  # a SYN that goes nowhere: hold it, answer nothing
                connection.torn = True
                await self._changed.wait()
            if connection.torn:
                connection.reset()
                return
            try:
                async with asyncio.timeout(_UPSTREAM_CONNECT_SECONDS):
                    up_reader, up_writer = await asyncio.open_connection(
                        "127.0.0.1", self.upstream_port
                    )
            except (OSError, TimeoutError):
                connection.reset()  # upstream down: the client sees its connection refused
                return
            connection.upstream = up_writer
            connection.pumps = [
                asyncio.create_task(self._pump(reader, up_writer, connection)),
                asyncio.create_task(self._pump(up_reader, writer, connection)),
            ]
            await asyncio.gather(*connection.pumps, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            if connection.torn:
                connection.reset()
            else:
                _close(connection)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        try:
            while chunk := await source.read(_CHUNK):
                while self.mode == "stall":
                    await self._changed.wait()
                if self.mode in ("blackhole", "reset") or connection.torn:
                    connection.torn = True
                    continue
                if self.mode == "latency":
                    await asyncio.sleep(self.latency_s)
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One side ended: end the other, so neither end waits on a half-dead link.
            for pump in connection.pumps:
                if pump is not asyncio.current_task():
                    pump.cancel()


def _close(connection: _Connection) -> None:
    for writer in (connection.client, connection.upstream):
        if writer is not None:
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0) rather than a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
