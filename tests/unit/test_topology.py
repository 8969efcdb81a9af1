"""Reading a REDIS_URL into a topology: one server, a cluster's seeds, Sentinel's service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from service.connection import (
    READ_BLOCK_MS,
    connect_redis,
    connect_redis_for_producer,
    connect_sync_redis_for_producer,
    durability_of,
)
from service.errors import ConfigError
from service.settings import redact_url
from service.topology import Durability, Topology, parse_topology
from tests.servers import make_certificates

SECRET = "s3cr3t-pa55"  # noqa: S105 - in URLs below, checked for leaks


def _parse(url: str) -> Topology:
    return parse_topology(url, min_socket_timeout=READ_BLOCK_MS / 1000)


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "service", "node_url"),
    [
        ("redis://h:6379/0", "single", (), None, "redis://h:6379/0"),
        ("unix:///run/r.sock", "single", (), None, "unix:///run/r.sock"),
        ("redis+cluster://a:7000", "cluster", (("a", 7000),), None, "redis://a:7000"),
        (
            f"rediss+cluster://u:{SECRET}@a:7000,b:7001/?socket_timeout=5",
            "cluster",
            (("a", 7000), ("b", 7001)),
            None,
            f"rediss://u:{SECRET}@a:7000/?socket_timeout=5",
        ),
        (
            "redis+sentinel://s1:26379,s2:26380,[::1]:26381/mymaster?db=2",
            "sentinel",
            (("s1", 26379), ("s2", 26380), ("::1", 26381)),
            "mymaster",
            "redis://s1:26379?db=2",
        ),
        (
            f"rediss+sentinel://:{SECRET}@s1:26379/cache.main?sentinel_password=x",
            "sentinel",
            (("s1", 26379),),
            "cache.main",
            f"rediss://:{SECRET}@s1:26379",
        ),
    ],
)
def test_forms(
    url: str, kind: str, nodes: tuple[tuple[str, int], ...], service: str | None, node_url: str
) -> None:
    topology = _parse(url)
    assert (topology.kind, topology.nodes, topology.service) == (kind, nodes, service)
    assert topology.node_url == node_url


@pytest.mark.parametrize(
    ("query", "durability"),
    [
        ("", Durability(0, 1000)),
        ("?wait_replicas=1", Durability(1, 1000)),
        ("?wait_replicas=2&wait_timeout_ms=250&socket_timeout=5", Durability(2, 250)),
    ],
)
def test_durability_on_every_form(query: str, durability: Durability) -> None:
    for base in ("redis://h:1/0", "redis+cluster://a:1,b:2", "redis+sentinel://s:1/m"):
        topology = _parse(base + query)
        assert topology.durability == durability
        assert "wait_" not in topology.node_url  # redis-py would refuse an unknown option


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:1", "must start with redis://, rediss://, unix://, redis+cluster://"),
        ("redis+cluster://a", "needs host:port for every node"),
        ("redis+cluster://a:1,b", "needs host:port for every node"),
        ("redis+cluster://a:1,:2", "a node's host is empty"),
        ("redis+cluster://a:1,b:99999", "has an invalid port"),
        ("redis+cluster://a:1/3", "a cluster has one database"),
        ("redis+cluster://a:1?db=3", "a cluster has one database"),
        ("redis+cluster://a:1?sentinel_password=x", "applies only to redis+sentinel://"),
        ("redis://h:1?sentinel_password=x", "applies only to redis+sentinel://"),
        ("redis+sentinel://s:1", "needs the service name"),
        ("redis+sentinel://s:1/a/b", "needs the service name"),
        ("redis+sentinel://s:1/m?socket_timeout=1", "above 2 (the longest blocking read)"),
        ("redis+cluster://a:1?ssl_cert_reqs=none", "applies only to rediss://"),
        ("redis://h:1?wait_replicas=x", "option wait_replicas must be a whole number"),
        ("redis://h:1?wait_replicas=17", "option wait_replicas must be a whole number"),
        ("redis://h:1?wait_replicas=1&wait_timeout_ms=0", "option wait_timeout_ms must be"),
        ("redis://h:1?wait_timeout_ms=5", "option wait_timeout_ms needs wait_replicas"),
        ("redis://h:1?wait_replicas=1&wait_replicas=2", "gives an option twice"),
        ("rediss+cluster://a:1?ssl_ca_certs=/no/such/ca.pem", "does not exist or cannot be"),
    ],
)
def test_problems_name_redis_url_and_never_the_secret(url: str, problem: str) -> None:
    secret_url = url.replace("://", f"://u:{SECRET}@", 1)
    with pytest.raises(ConfigError) as caught:
        _parse(secret_url)
    assert caught.value.variable == "REDIS_URL"
    assert problem in str(caught.value)
    assert SECRET not in str(caught.value)


def test_repr_keeps_secrets_out() -> None:
    topology = _parse(
        f"redis+sentinel://u:{SECRET}@s:1/m?sentinel_password={SECRET}&sentinel_username=su"
    )
    assert topology.sentinel_password == SECRET
    assert SECRET not in repr(topology)


def test_a_producers_wait_must_end_before_its_socket_timeout() -> None:
    url = "redis://h:1/0?wait_replicas=1&wait_timeout_ms=2000"
    with pytest.raises(ConfigError, match="wait_timeout_ms must be below the producer's timeout"):
        connect_sync_redis_for_producer(url, timeout=2.0, connect_timeout=1.0)
    with pytest.raises(ConfigError, match=r"producer's timeout \(1.5 s\)"):
        connect_redis_for_producer(url, timeout=1.5, connect_timeout=1.0)
    client = connect_sync_redis_for_producer(url, timeout=2.5, connect_timeout=1.0)
    assert durability_of(client) == Durability(1, 2000)
    client.close()


def test_tls_and_logins_reach_every_connection_and_no_repr_shows_a_secret(
    tmp_path: Path,
) -> None:
    """Built, not connected: TLS options and credentials go to the data nodes, the sentinels
    get TLS and their own login, and neither the URL as logged nor a repr shows a password."""
    ca = make_certificates(tmp_path).ca
    tls = f"ssl_ca_certs={ca}&ssl_check_hostname=false"
    sentinel_url = (
        f"rediss+sentinel://u:{SECRET}@s1:26379,s2:26380/main?{tls}"
        f"&sentinel_username=su&sentinel_password={SECRET}x"
    )
    cluster_url = f"rediss+cluster://u:{SECRET}@n1:7000,n2:7001?{tls}"

    async def build() -> None:
        sentinel_client = connect_redis(sentinel_url)
        assert isinstance(sentinel_client, Redis)
        data = sentinel_client.connection_pool.connection_kwargs
        assert (data["username"], data["password"], data["ssl_ca_certs"]) == ("u", SECRET, str(ca))
        assert sentinel_client.connection_pool.connection_class.__name__.endswith("SSLConnection")
        sentinels = sentinel_client._sentinel_manager.sentinels  # type: ignore[attr-defined]
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        watcher = sentinels[0].connection_pool
        assert watcher.connection_kwargs["username"] == "su"
        assert watcher.connection_kwargs["password"] == f"{SECRET}x"
        assert watcher.connection_class.__name__ == "SSLConnection"
        cluster_client = connect_redis(cluster_url)
        assert isinstance(cluster_client, RedisCluster)
        nodes = cluster_client.nodes_manager
        assert nodes.connection_kwargs["password"] == SECRET
        assert issubclass(nodes.connection_kwargs["connection_class"], SSLConnection)
        assert [node.port for node in nodes.startup_nodes.values()] == [7000, 7001]
        for shown in (repr(sentinel_client), repr(cluster_client), repr(sentinels[0])):
            assert SECRET not in shown
        await sentinel_client.aclose()
        await cluster_client.aclose()

    asyncio.run(build())
    for url in (sentinel_url, cluster_url):
        logged = redact_url(url)
        assert SECRET not in logged
        assert logged.startswith(("rediss+sentinel://u:***@s1:26379,s2:26380/main",
                                  "rediss+cluster://u:***@n1:7000,n2:7001"))  # fmt: skip
