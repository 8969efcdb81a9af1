"""The Redis client the service builds, against a real redis-server behind a resetting proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.exceptions
import uvloop
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from service.connection import AnyRedis, connect_redis
from service.local.redis_server import RedisServer
from tests.chaos.proxy import FaultProxy

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
LOOPS: dict[str, Runner] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


async def _write_after_reset(redis_port: int, client_for: Callable[[str], AnyRedis]) -> Any:
    """A pipeline written on a connection the peer reset: what it raises; then a PING."""
    proxy = FaultProxy(redis_port, "redis")
    await proxy.start()
    client = client_for(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        assert await client.ping()
        async with client.pipeline(transaction=False) as pipe:
            pipe.ping()
            proxy.set_mode("reset")
            await asyncio.sleep(0.2)  # the loop sees the RST and closes the transport
            proxy.set_mode("pass")
            try:
                await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - which exception it is, is the result
                error = exc
            else:
                pytest.fail("a pipeline on a reset connection succeeded")
        # The broken connection was dropped: the next command opens a new one.
        assert await client.ping()
        return error
    finally:
        await client.aclose()
        await proxy.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_write_on_a_reset_connection_is_a_connection_error(
    redis_server: RedisServer, loop: str
) -> None:
    error = LOOPS[loop](_write_after_reset(redis_server.port, connect_redis))

    # The worker rides out redis-py's ConnectionError; anything else would stop it.
    assert isinstance(error, redis.exceptions.ConnectionError), repr(error)


def test_plain_redis_py_on_uvloop_raises_runtime_error(redis_server: RedisServer) -> None:
    """Why connect_redis wraps the connection: when this fails, the wrapper can go."""

    def plain(url: str) -> Redis:
        return Redis.from_url(url, protocol=2)

    error = uvloop.run(_write_after_reset(redis_server.port, plain))

    assert isinstance(error, RuntimeError), repr(error)
    assert "handler is closed" in str(error)


async def _write_while_disconnected(redis_port: int) -> BaseException | None:
    """A write whose connection another task disconnects before it runs: what it raises.

    A Redis Cluster client does that to a node's connections when a failover changes the slot
    map. Under a socket timeout (Python 3.11's `wait_for`), the write runs in a task of its own
    and finds the writer gone.
    """
    client = connect_redis(f"redis://127.0.0.1:{redis_port}/0?socket_timeout=5")
    assert isinstance(client, Redis)
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call] # untyped in redis-py
    try:
        write = asyncio.create_task(connection.send_packed_command(b"*1\r\n$4\r\nPING\r\n", False))
        await asyncio.sleep(0)  # the write is under way: it waits for its own task
        await connection.disconnect(nowait=True)
        try:
            await write
        except Exception as exc:  # noqa: BLE001 - which exception it is, is the result
            return exc
        return None
    finally:
        await client.connection_pool.release(connection)
        await client.aclose()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_write_on_a_connection_closed_underneath_is_a_connection_error(
    redis_server: RedisServer, loop: str
) -> None:
    error = LOOPS[loop](_write_while_disconnected(redis_server.port))

    # Not an AttributeError ('NoneType' has no 'writelines'): the worker would take that for a
    # bug and leave the entry for the reclaim (a resend); a ConnectionError it rides out.
    assert error is None or isinstance(error, redis.exceptions.ConnectionError), repr(error)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", "Connection"),
        ("rediss://user:secret@cache.example:6379", "SSLConnection"),
        ("unix:///run/redis.sock", "UnixDomainSocketConnection"),
    ],
)
def test_every_scheme_keeps_its_kind_of_connection(url: str, kind: str) -> None:
    client = connect_redis(url)
    assert isinstance(client, Redis)
    connection_class = client.connection_pool.connection_class

    assert connection_class.__module__ == "service.clients"
    assert connection_class.__bases__[-1].__name__ == kind


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "Connection"),
        ("rediss+cluster://user:secret@cache.example:6379", "SSLConnection"),
    ],
)
def test_a_cluster_client_keeps_its_kind_of_connection_and_is_closed_write_safe(
    url: str, kind: str
) -> None:
    client = connect_redis(url)  # connects nowhere until its first command
    assert isinstance(client, RedisCluster)
    manager = client.nodes_manager
    # The nodes known now, and those a topology change brings (built from these kwargs).
    classes = [node.connection_class for node in manager.startup_nodes.values()]
    classes.append(manager.connection_kwargs["connection_class"])

    for connection_class in classes:
        assert connection_class.__module__ == "service.clients"
        assert connection_class.__bases__[-1].__name__ == kind
