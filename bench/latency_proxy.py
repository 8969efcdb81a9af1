"""A TCP proxy that delays every chunk by a fixed time each way: a relay across a network.

`python -m bench.latency_proxy --port P --target T --delay-ms 10` forwards 127.0.0.1:P to
127.0.0.1:T. Each chunk read is written `delay` later, in order, without holding up the reads
behind it (a pipe with latency, not with a small window). It prints `listening` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque

from service.worker import eventloop

__all__ = ["serve"]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy `reader` to `writer`, each chunk `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queued: deque[tuple[float, bytes]] = deque()
    ready = asyncio.Event()
    done = False

    async def deliver() -> None:
        while queued or not done:
            if not queued:
                ready.clear()
                await ready.wait()
                continue
            due, chunk = queued[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            queued.popleft()
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(65536):
            queued.append((loop.time() + delay, chunk))
            ready.set()
    except OSError:
        pass
    finally:
        done = True
        ready.set()
        with contextlib.suppress(OSError):
            await delivery


async def _connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: int,
    delay: float,
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    await asyncio.sleep(delay)  # the handshake crosses the network too
    await asyncio.gather(
        _pump(client_reader, server_writer, delay),
        _pump(server_reader, client_writer, delay),
        return_exceptions=True,
    )
    for writer in (client_writer, server_writer):
        writer.close()


async def serve(
    port: int, target: int, delay: float, *, ready: asyncio.Event | None = None
) -> None:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target` until cancelled (`ready` set once it
    listens)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _connection(reader, writer, target, delay)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"listening {time.monotonic()}", flush=True)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def main() -> None:
    """Run the proxy (on uvloop where installed, like the worker)."""
    parser = argparse.ArgumentParser(prog="python -m bench.latency_proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="each way (10)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(serve(args.port, args.target, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
