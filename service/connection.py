"""Building the Redis client every part of the service uses, with timeouts that fit streams."""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis

__all__ = ["READ_BLOCK_MS", "connect_redis", "text"]

# How long one XREADGROUP waits for new entries. redis-py raises TimeoutError when a blocking
# read outlasts socket_timeout (redis-py #2807), so the socket timeout below must stay above it.
READ_BLOCK_MS: Final = 2_000
_SOCKET_TIMEOUT_SECONDS: Final = 10.0
_CONNECT_TIMEOUT_SECONDS: Final = 5.0


def connect_redis(url: str) -> Redis:
    """A client for `url` (`redis://`, `rediss://` or `unix://`); connects lazily.

    RESP2 is pinned: the stream replies this package parses have the same shape on every
    supported server and redis-py version.
    """
    return Redis.from_url(
        url,
        protocol=2,
        decode_responses=False,
        socket_timeout=_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
    )


def text(value: bytes | str) -> str:
    """A reply value (an entry id, a consumer name) as text: the client returns bytes."""
    return value.decode() if isinstance(value, bytes) else value
