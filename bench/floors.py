"""Floors: what this machine does with the raw clients and nothing of the service around them.

Every function returns a rate (items per second). They time the steady state only: clients are
connected (and SMTP connections opened) before the clock starts, as the worker keeps its own
connections open.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiosmtplib
from redis.asyncio import Redis

from service.worker.transaction import transmit

from .workload import MAIL_ADDRESS, MAIL_FROM, RECIPIENT, prebuilt_message, xadd_fields

__all__ = [
    "redis_client",
    "smtp_resend_rate",
    "xadd_pipelined_rate",
    "xadd_rate",
    "xreadgroup_ack_rate",
]

PIPELINE_SIZE = 1_000
READ_COUNT = 100
_GROUP = "floor"


def redis_client(url: str) -> Redis:
    """A plain redis-py client (RESP2, as the service pins it)."""
    return Redis.from_url(url, protocol=2, decode_responses=False)


async def xadd_rate(redis: Redis, stream: str, count: int) -> float:
    """XADD one entry per round trip."""
    fields: Any = xadd_fields()
    await redis.ping()
    started = time.perf_counter()
    for _ in range(count):
        await redis.xadd(stream, fields)
    return count / (time.perf_counter() - started)


async def xadd_pipelined_rate(redis: Redis, stream: str, count: int) -> float:
    """XADD in pipelines of `PIPELINE_SIZE` (no transaction), one round trip each."""
    fields: Any = xadd_fields()
    await redis.ping()
    started = time.perf_counter()
    for start in range(0, count, PIPELINE_SIZE):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(min(PIPELINE_SIZE, count - start)):
                pipe.xadd(stream, fields)
            await pipe.execute()
    return count / (time.perf_counter() - started)


async def xreadgroup_ack_rate(redis: Redis, stream: str, count: int) -> float:
    """Read `count` pre-added entries with XREADGROUP COUNT 100 and XACK each batch."""
    await redis.delete(stream)
    await xadd_pipelined_rate(redis, stream, count)
    await redis.xgroup_create(stream, _GROUP, id="0")
    done = 0
    started = time.perf_counter()
    while done < count:
        reply: Any = await redis.xreadgroup(_GROUP, "floor-1", {stream: ">"}, count=READ_COUNT)
        ids = [entry_id for entry_id, _ in reply[0][1]]
        await redis.xack(stream, _GROUP, *ids)
        done += len(ids)
    return count / (time.perf_counter() - started)


async def smtp_resend_rate(port: int, connections: int, count: int, *, lean: bool) -> float:
    """Resend one prebuilt message `count` times over `connections` reused connections.

    With `lean`, each send is the worker's own transaction (`transmit`), else aiosmtplib's
    `sendmail`: the worker should be compared with the faster of the two.
    """
    message = prebuilt_message()
    clients = [
        aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, use_tls=False, start_tls=False, local_hostname="bench"
        )
        for _ in range(connections)
    ]
    await asyncio.gather(*(client.connect() for client in clients))
    remaining = [count]

    async def send_until_done(client: aiosmtplib.SMTP) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            if lean:
                await transmit(client, MAIL_ADDRESS, [RECIPIENT], message)
            else:
                await client.sendmail(MAIL_FROM, [RECIPIENT], message)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(send_until_done(client) for client in clients))
        return count / (time.perf_counter() - started)
    finally:
        await asyncio.gather(*(client.quit() for client in clients), return_exceptions=True)
        for client in clients:
            client.close()
