"""Building the Redis clients every part of the service uses, with timeouts that fit each.

The worker's client waits long (blocking stream reads) and retries as redis-py does by default:
it rides out any outage anyway. A producer's client serves a web request: it fails within about
`connect_timeout + timeout`, and retries a command only when the connection it used had been
closed before the command could run (a pooled connection Redis dropped while idle), never after
a timeout, when the command may have run: the caller decides, with an idempotency key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import redis
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .addresses import redis_tls_problem, redis_url_problem
from .errors import ConfigError

__all__ = [
    "PRODUCER_CONNECT_TIMEOUT_SECONDS",
    "PRODUCER_TIMEOUT_SECONDS",
    "READ_BLOCK_MS",
    "check_redis_url",
    "connect_redis",
    "connect_redis_for_producer",
    "connect_sync_redis_for_producer",
]

# How long one XREADGROUP waits for new entries. redis-py raises TimeoutError when a blocking
# read outlasts socket_timeout (redis-py #2807), so the socket timeout below must stay above it.
READ_BLOCK_MS: Final = 2_000
_SOCKET_TIMEOUT_SECONDS: Final = 10.0
_CONNECT_TIMEOUT_SECONDS: Final = 5.0
# A producer's defaults: a hung or unreachable Redis fails an enqueue in about 2 to 3 seconds.
PRODUCER_TIMEOUT_SECONDS: Final = 2.0
PRODUCER_CONNECT_TIMEOUT_SECONDS: Final = 1.0
# Every client speaks RESP2 (protocol=2): the stream replies this package parses have one shape
# on every supported server and redis-py version; and returns bytes, as field values are binary.


def connect_redis(url: str) -> Redis:
    """The worker's (and admin's) client for `url` (`redis://`, `rediss://` or `unix://`);
    connects lazily. A URL the client could not use raises `ConfigError` here rather than at
    the first connect (`check_redis_url`)."""
    check_redis_url(url)
    client = Redis.from_url(
        url,
        socket_timeout=_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        protocol=2,
        decode_responses=False,
        health_check_interval=30,
    )
    return _closed_write_safe(client)


def connect_redis_for_producer(url: str, *, timeout: float, connect_timeout: float) -> Redis:
    """An asyncio producer's client for `url`: `timeout` per command, one retry only on a
    connection closed before the command ran (see the module's docstring)."""
    check_redis_url(url)
    client = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        protocol=2,
        decode_responses=False,
        health_check_interval=30,
    )
    return _closed_write_safe(client)


def connect_sync_redis_for_producer(
    url: str, *, timeout: float, connect_timeout: float
) -> redis.Redis:
    """A sync producer's client for `url`, as `connect_redis_for_producer`. Safe to share
    between threads; after a fork, the child opens connections of its own (redis-py's pool
    checks the process id)."""
    check_redis_url(url)
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        protocol=2,
        decode_responses=False,
        health_check_interval=30,
    )


def _closed_write_safe(client: Redis) -> Redis:
    """`client`, whose writes on a reset connection raise ConnectionError on uvloop too.

    The URL picks redis-py's connection class (TCP, TLS or unix socket), and a class passed to
    from_url would be overridden by it: ours is swapped in before the pool opens a connection.
    """
    pool = client.connection_pool
    pool.connection_class = _CLOSED_WRITE_SAFE.get(pool.connection_class, pool.connection_class)
    return client


def check_redis_url(url: str) -> None:
    """Raise `ConfigError` naming `REDIS_URL` for anything in `url` a client could not use.

    The URL's syntax, its query options (a `?socket_timeout=` must outlast the blocking read),
    and for `rediss://` the files its TLS options name. The message never repeats the URL.
    """
    problem = redis_url_problem(url, min_socket_timeout=READ_BLOCK_MS / 1000)
    if problem is None:
        problem = redis_tls_problem(url)
    if problem is not None:
        raise ConfigError("REDIS_URL", problem)


class _ClosedWriteIsConnectionError(AbstractConnection):
    """A write to a connection the peer reset raises redis-py's ConnectionError on any loop.

    asyncio's loop reports such a write as an OSError, which redis-py turns into ConnectionError
    (and the worker rides out); uvloop raises RuntimeError("... the handler is closed"), which
    redis-py lets through as if it were a bug. redis-py has already dropped the connection when
    the error reaches here, so the next command opens a new one.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if "handler is closed" not in str(exc):
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
