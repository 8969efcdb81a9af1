"""redis-py's client classes, as this service needs them.

- Connections whose write on a reset socket raises redis-py's ConnectionError on uvloop too,
  and which pack commands with hiredis (a dependency: redis[hiredis]).
- A cluster client whose aclose() closes every connection also after a failed command.
- A Sentinel-following client that closes its sentinels' connections when it is closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Final, cast

import redis
import redis.sentinel
from hiredis import pack_command as _pack_in_c
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

__all__ = ["Cluster", "SentinelRedis", "SyncSentinelRedis", "closed_write_safe"]


class Cluster(RedisCluster):
    """redis-py's cluster client, whose aclose() closes every connection also after a failed
    command: redis-py 8.1 marks the client for re-initialisation on a connection error or a
    timeout, and its aclose() then closes nothing (the sockets leak). Its connections raise
    ConnectionError for a write on a reset socket on uvloop too (see `closed_write_safe`): a
    failover resets them, and a RuntimeError there stopped a worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The constructor picks the class (TCP or TLS) itself; the nodes it knows now and every
        # node it discovers later are built from these kwargs.
        node_kwargs = self.nodes_manager.connection_kwargs
        safe = _CLOSED_WRITE_SAFE.get(node_kwargs["connection_class"])
        if safe is not None:
            node_kwargs["connection_class"] = safe
            for node in self.nodes_manager.startup_nodes.values():
                node.connection_class = cast("type[Connection]", safe)  # TCP or TLS: a Connection

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py 8.1 resolves a command's policy (COMMAND, on the startup node) before it
        # initialises the client, and initialising closes the startup node's connections: a
        # fresh client given a burst of commands (a web app's first requests) saw writes on
        # closed connections. Every command of the burst waits for the one initialisation; one
        # that fails is left to redis-py's own retries, below.
        if self._initialize:
            with contextlib.suppress(RedisError, OSError):
                await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def aclose(self) -> None:
        if self._initialize:
            await self.nodes_manager.aclose()
            await self.nodes_manager.aclose("startup_nodes")
        else:
            await super().aclose()


class SentinelRedis(Redis):
    """A client of the primary the sentinels name, which closes its sentinel clients too."""

    _sentinel_manager: Sentinel | None = None

    @classmethod
    def following(cls, sentinel: Sentinel, service: str) -> SentinelRedis:
        client: SentinelRedis = sentinel.master_for(service, redis_class=cls)
        client._sentinel_manager = sentinel
        return client

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self._sentinel_manager is not None:
            for client in self._sentinel_manager.sentinels:
                await client.aclose()


class SyncSentinelRedis(redis.Redis):
    """As `SentinelRedis`, for the sync producer."""

    _sentinel_manager: redis.sentinel.Sentinel | None = None

    @classmethod
    def following(
        cls, sentinel: redis.sentinel.Sentinel, service: str, retry: Retry
    ) -> SyncSentinelRedis:
        client: SyncSentinelRedis = sentinel.master_for(service, redis_class=cls, retry=retry)  # type: ignore[no-untyped-call] # untyped in redis-py
        client._sentinel_manager = sentinel
        return client

    def close(self) -> None:
        super().close()
        if self._sentinel_manager is not None:
            for client in self._sentinel_manager.sentinels:
                client.close()


def closed_write_safe(client: Redis) -> Redis:
    """`client`, whose writes on a reset connection raise ConnectionError on uvloop too.

    The URL picks redis-py's connection class (TCP, TLS or unix socket), and a class passed to
    from_url would be overridden by it: ours is swapped in before the pool opens a connection.
    """
    pool = client.connection_pool
    pool.connection_class = _CLOSED_WRITE_SAFE.get(pool.connection_class, pool.connection_class)
    return client


class _ClosedWriteIsConnectionError(AbstractConnection):
    """A write to a connection the peer reset raises redis-py's ConnectionError on any loop.

    asyncio's loop reports such a write as an OSError, which redis-py turns into ConnectionError
    (and the worker rides out); uvloop raises RuntimeError("... the handler is closed"), which
    redis-py lets through as if it were a bug. The same for a write whose connection another
    task closed while it waited to run (a cluster client does that to a node's connections when
    a failover changes the slot map): redis-py reads a writer that is now None, an
    AttributeError. redis-py has already dropped the connection when the error reaches here, so
    the next command opens a new one.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in RESP, packed by hiredis in C. redis-py's asyncio connection packs in
        Python, argument by argument, and a settle has some twenty of them: that was a large
        part of a worker's CPU per email (its sync client already packs with hiredis).

        Whatever hiredis does not take as it is (a command name of two words such as
        `SCRIPT LOAD`, a bytearray, a value of the wrong type) goes to redis-py's own packing,
        which splits it or raises its DataError as before.
        """
        first = args[0]
        if isinstance(first, str) and " " not in first:
            try:
                return [_pack_in_c(args)]
            except TypeError:
                pass
        packed: list[bytes] = super().pack_command(*args)
        return packed

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
                raise
            raise RedisConnectionError("Error while writing to socket: connection closed") from exc
        except AttributeError as exc:
            if "'NoneType'" not in str(exc):
                raise
            raise RedisConnectionError("Error while writing to socket: connection closed") from exc


class _TcpConnection(_ClosedWriteIsConnectionError, Connection):
    pass


class _TlsConnection(_ClosedWriteIsConnectionError, SSLConnection):
    pass


class _UnixConnection(_ClosedWriteIsConnectionError, UnixDomainSocketConnection):
    pass


_CLOSED_WRITE_SAFE: Final[dict[type[AbstractConnection], type[AbstractConnection]]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}
