"""The benchmark's latency proxy (bench/latency_proxy.py): every byte arrives, in order, and no
earlier than the delay each way (a lower bound only: speed is the benchmark's business)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.latency_proxy import serve
from service.local.redis_server import free_port


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_bytes_cross_intact_in_order_and_no_sooner_than_the_delay_each_way() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = echo.sockets[0].getsockname()[1]
    port = free_port()
    ready = asyncio.Event()
    proxy = asyncio.create_task(serve(port, target, delay=0.05, ready=ready))
    try:
        await ready.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
        started = time.monotonic()
        writer.write(b"ping\r\n")
        assert await reader.readexactly(6) == b"ping\r\n"
        round_trip = time.monotonic() - started
        writer.write(payload)
        writer.write_eof()
        echoed = await reader.read()  # until the echo closes, through the proxy
        writer.close()
    finally:
        proxy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await proxy
        echo.close()

    assert round_trip >= 2 * 0.05
    assert echoed == payload
