"""Building the Redis clients every part of the service uses, with timeouts that fit each.

The worker's client waits long (blocking stream reads) and retries as redis-py does by default:
it rides out any outage anyway. A producer's client serves a web request: it fails within about
`connect_timeout + timeout`, and retries a command only when the connection it used had been
closed before the command could run (a pooled connection Redis dropped while idle), never after
a timeout, when the command may have run: the caller decides, with an idempotency key.

The URL (`topology`) picks the client: redis-py's `Redis` for one server, its `RedisCluster`
for `redis+cluster://`, and a `Redis` whose connections go to the primary the sentinels name for
`redis+sentinel://` (a new connection asks them again, so a failover is followed). Closing a
client built here closes everything it opened (the sentinels' connections too).
"""

from __future__ import annotations

import weakref
from typing import Any, Final, TypeAlias

import redis
import redis.cluster
import redis.sentinel
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .clients import Cluster, SentinelRedis, SyncSentinelRedis, closed_write_safe
from .errors import ConfigError
from .topology import Durability, Topology, parse_topology

__all__ = [
    "PRODUCER_CONNECT_TIMEOUT_SECONDS",
    "PRODUCER_TIMEOUT_SECONDS",
    "READ_BLOCK_MS",
    "AnyRedis",
    "AnySyncRedis",
    "check_redis_url",
    "connect_redis",
    "connect_redis_for_producer",
    "connect_sync_redis_for_producer",
    "durability_of",
    "login_of",
    "node_holding",
    "sync_node_holding",
]

AnyRedis: TypeAlias = Redis | RedisCluster
"""An asyncio client of one Redis (direct or through Sentinel) or of a Redis Cluster."""
AnySyncRedis: TypeAlias = redis.Redis | redis.cluster.RedisCluster
"""The sync counterpart of `AnyRedis`."""

# How long one XREADGROUP waits for new entries. redis-py raises TimeoutError when a blocking
# read outlasts socket_timeout (redis-py #2807), so the socket timeout below must stay above it.
READ_BLOCK_MS: Final = 2_000
_SOCKET_TIMEOUT_SECONDS: Final = 10.0
_CONNECT_TIMEOUT_SECONDS: Final = 5.0
# A producer's defaults: a hung or unreachable Redis fails an enqueue in about 2 to 3 seconds.
PRODUCER_TIMEOUT_SECONDS: Final = 2.0
PRODUCER_CONNECT_TIMEOUT_SECONDS: Final = 1.0


def connect_redis(url: str) -> AnyRedis:
    """The worker's (and admin's) client for `url` (any form `topology` reads); connects
    lazily. A URL the client could not use raises `ConfigError` here rather than at the first
    connect (`check_redis_url`)."""
    return _connect(check_redis_url(url), timeout=_SOCKET_TIMEOUT_SECONDS,
                    connect_timeout=_CONNECT_TIMEOUT_SECONDS, retry=None)  # fmt: skip


def connect_redis_for_producer(url: str, *, timeout: float, connect_timeout: float) -> AnyRedis:
    """An asyncio producer's client for `url`: `timeout` per command, one retry only on a
    connection closed before the command ran (see the module's docstring)."""
    retry = AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    topology = _producer_topology(url, timeout)
    return _connect(topology, timeout=timeout, connect_timeout=connect_timeout, retry=retry)


def connect_sync_redis_for_producer(
    url: str, *, timeout: float, connect_timeout: float
) -> AnySyncRedis:
    """A sync producer's client for `url`, as `connect_redis_for_producer`. Safe to share
    between threads; after a fork, the child opens connections of its own (redis-py's pool
    checks the process id)."""
    topology = _producer_topology(url, timeout)
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    options: dict[str, Any] = {
        **_COMMON, "socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
    }  # fmt: skip
    client: AnySyncRedis
    if topology.kind == "cluster":
        client = redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in topology.nodes],  # type: ignore[no-untyped-call] # redis-py leaves it untyped
            # No retry: see _connect.
            **_cluster_options(topology, {**options, "retry": Retry(NoBackoff(), 0)}),
        )
    elif topology.kind == "sentinel":
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call] # untyped in redis-py
            topology.nodes,
            sentinel_kwargs=_sentinel_options(topology, options),
            **_node_options(topology, options),
        )
        sync_primary = SyncSentinelRedis.following(sentinel, topology.service or "", retry)
        client = sync_primary
    else:
        client = redis.Redis.from_url(topology.node_url, retry=retry, **options)
    _DURABILITY[client] = topology.durability
    return client


def _producer_topology(url: str, timeout: float) -> Topology:
    """What `url` names, for a producer whose commands time out after `timeout` seconds."""
    topology = check_redis_url(url)
    if topology.durability.replicas and topology.durability.timeout_ms >= timeout * 1000:
        # The WAIT after an enqueue would outlast the socket and fail every slow replica.
        problem = f"option wait_timeout_ms must be below the producer's timeout ({timeout:g} s)"
        raise ConfigError("REDIS_URL", problem)
    return topology


def login_of(client: AnyRedis) -> tuple[str | None, str | None]:
    """The (username, password) a client logs in to its data nodes with (None: not set)."""
    if isinstance(client, RedisCluster):
        options = client.nodes_manager.connection_kwargs
    else:
        options = client.connection_pool.connection_kwargs
    return options.get("username"), options.get("password")


async def node_holding(client: AnyRedis, key: str) -> dict[str, Any]:
    """Keyword arguments that send a command naming no key (INFO, CONFIG GET, ACL, TIME) to
    the server holding `key`, on a cluster, where redis-py would pick any node; none elsewhere.
    """
    if not isinstance(client, RedisCluster):
        return {}
    await client.initialize()  # the slot map, once (after a failover: refreshed by redis-py)
    return {"target_nodes": client.get_node_from_key(key)}


def sync_node_holding(client: AnySyncRedis, key: str) -> dict[str, Any]:
    """As `node_holding`, for a sync client (whose cluster client maps the slots when built)."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return {}
    return {"target_nodes": client.get_node_from_key(key)}  # type: ignore[no-untyped-call] # untyped in redis-py


def durability_of(client: AnyRedis | AnySyncRedis) -> Durability:
    """The durability the URL of a client built here asked for (`?wait_replicas=`); none for
    a client built elsewhere."""
    return _DURABILITY.get(client, Durability())


# Every client speaks RESP2 (protocol=2): the stream replies this package parses have one shape
# on every supported server and redis-py version; and returns bytes, as field values are binary.
_COMMON: Final[dict[str, Any]] = {
    "protocol": 2,
    "decode_responses": False,
    "health_check_interval": 30,
}
_DURABILITY: weakref.WeakKeyDictionary[Any, Durability] = weakref.WeakKeyDictionary()


def _connect(
    topology: Topology, *, timeout: float, connect_timeout: float, retry: AsyncRetry | None
) -> AnyRedis:
    options: dict[str, Any] = {
        **_COMMON, "socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
    }  # fmt: skip
    if retry is not None:
        options["retry"] = retry
    client: AnyRedis
    if topology.kind == "cluster":
        # redis-py's cluster client runs a command again after any ConnectionError or
        # TimeoutError, also when the command ran and its reply was lost: an ENQUEUE run twice
        # is two tasks, each sent. A producer's cluster client never retries (the caller
        # decides, with an idempotency key); the worker's retries once (a settle takes effect
        # once; a read run twice leaves entries pending, reclaimed later) and otherwise waits
        # a failover out with its own backoff.
        cluster_retry = {"retry": AsyncRetry(NoBackoff(), 1 if retry is None else 0)}
        client = Cluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            **_cluster_options(topology, {**options, **cluster_retry}),
        )
    elif topology.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call] # untyped in redis-py
            topology.nodes,
            sentinel_kwargs=_sentinel_options(topology, options),
            **_node_options(topology, options),
        )
        client = SentinelRedis.following(sentinel, topology.service or "")
    else:
        client = closed_write_safe(Redis.from_url(topology.node_url, **options))
    _DURABILITY[client] = topology.durability
    return client


def _node_options(topology: Topology, options: dict[str, Any]) -> dict[str, Any]:
    """What every connection to a data node takes: the URL's options (credentials, TLS,
    socket) over `options`, without the address (the seeds or the sentinels give it)."""
    parsed: dict[str, Any] = {**options, **dict(parse_url(topology.node_url))}
    for name in ("host", "port", "path"):
        parsed.pop(name, None)
    if parsed.pop("connection_class", None) is SSLConnection:
        parsed["ssl"] = True
    return parsed


def _cluster_options(topology: Topology, options: dict[str, Any]) -> dict[str, Any]:
    node = _node_options(topology, options)
    node.pop("db", None)  # a cluster has database 0 only
    return node


def _sentinel_options(topology: Topology, options: dict[str, Any]) -> dict[str, Any]:
    """The sentinels' connections: the data nodes' TLS and timeouts, their own login."""
    node = _node_options(topology, options)
    for name in ("username", "password", "db", "retry", "client_name"):
        node.pop(name, None)
    if topology.sentinel_username:
        node["username"] = topology.sentinel_username
    if topology.sentinel_password:
        node["password"] = topology.sentinel_password
    return node


def check_redis_url(url: str) -> Topology:
    """What `url` names; raise `ConfigError` naming `REDIS_URL` for anything a client could
    not use.

    The URL's syntax, its query options (a `?socket_timeout=` must outlast the blocking read),
    and for TLS the files its options name. The message never repeats the URL.
    """
    return parse_topology(url, min_socket_timeout=READ_BLOCK_MS / 1000)
