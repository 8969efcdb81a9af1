"""Reading a REDIS_URL into a topology: one server, a cluster's seeds, Sentinel's service."""

from __future__ import annotations

import pytest

from service.connection import (
    READ_BLOCK_MS,
    connect_redis_for_producer,
    connect_sync_redis_for_producer,
    durability_of,
)
from service.errors import ConfigError
from service.topology import Durability, Topology, parse_topology

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
