"""What a `REDIS_URL` names: one Redis, a Redis Cluster or a Sentinel-managed primary.

    redis://[user:pass@]host:port/db          one server (rediss:// with TLS, unix:// a socket)
    redis+cluster://[user:pass@]host:port,host:port,...     a Redis Cluster, from seed nodes
    redis+sentinel://[user:pass@]host:port,host:port,.../service_name   the primary Sentinel names

`rediss+cluster://` and `rediss+sentinel://` speak TLS (to the sentinels too). The query takes
the options of a `redis://` URL (socket timeouts, TLS files...), and:

- `wait_replicas=N` (any form): after each enqueue and settle, wait until N replicas hold it
  (Redis's WAIT), at most `wait_timeout_ms` (default 1000); see docs/reliability.md.
- `sentinel_username`, `sentinel_password`: the sentinels' own login, if they have one.

Parsed in one place, here; the clients are built by `connection`. Nothing here repeats a URL
or a value in a message, and a `Topology` keeps its secrets out of its repr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from .addresses import host_problem, redis_tls_problem, redis_url_problem
from .errors import ConfigError

__all__ = ["Durability", "Topology", "parse_topology"]

Kind = Literal["single", "cluster", "sentinel"]

_MULTI_SCHEMES: Final[dict[str, tuple[Kind, str]]] = {
    "redis+cluster": ("cluster", "redis"),
    "rediss+cluster": ("cluster", "rediss"),
    "redis+sentinel": ("sentinel", "redis"),
    "rediss+sentinel": ("sentinel", "rediss"),
}
_WAIT_OPTIONS: Final = ("wait_replicas", "wait_timeout_ms")
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")
_DEFAULT_WAIT_TIMEOUT_MS: Final = 1_000
_MAX_REPLICAS: Final = 16
_SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


@dataclass(frozen=True, slots=True)
class Durability:
    """How many replicas must hold a write before the caller hears it succeeded (0: none)."""

    replicas: int = 0
    timeout_ms: int = _DEFAULT_WAIT_TIMEOUT_MS


@dataclass(frozen=True, slots=True)
class Topology:
    """A parsed `REDIS_URL`.

    `node_url` is a `redis://` or `rediss://` URL carrying what every connection to a data node
    uses (credentials, TLS and socket options) with the first seed as its host: redis-py reads
    it as it reads any URL. `nodes` are the seeds (cluster) or the sentinels.
    """

    kind: Kind
    node_url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    durability: Durability = Durability()
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def parse_topology(url: str, *, min_socket_timeout: float) -> Topology:
    """Read `url`; raise `ConfigError` naming `REDIS_URL` for anything a client could not use.

    `min_socket_timeout`: the floor of a `?socket_timeout=` (the longest blocking read).
    """
    problem, topology = _parse(url, min_socket_timeout)
    if problem is None and topology is not None:
        problem = redis_tls_problem(topology.node_url)
    if problem is not None or topology is None:
        raise ConfigError("REDIS_URL", problem or "is not a valid URL")
    return topology


def _parse(  # noqa: PLR0911, PLR0912 - one return per way a URL can be wrong, in order
    url: str, min_socket_timeout: float
) -> tuple[str | None, Topology | None]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL", None
    query = parse_qsl(parts.query, keep_blank_values=False)
    ours = {name: value for name, value in query if name in (*_WAIT_OPTIONS, *_SENTINEL_OPTIONS)}
    if len(ours) != sum(1 for name, _ in query if name in ours):
        return "gives an option twice", None
    rest = urlencode([(name, value) for name, value in query if name not in ours])
    durability, problem = _durability(ours)
    if problem:
        return problem, None
    if parts.scheme not in (*_MULTI_SCHEMES, "redis", "rediss", "unix"):
        schemes = "redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"
        return f"must start with {schemes}", None
    if parts.scheme not in _MULTI_SCHEMES:
        if any(name in ours for name in _SENTINEL_OPTIONS):
            return "option sentinel_* applies only to redis+sentinel:// URLs", None
        # Rebuilt by hand: geturl() drops the "//" of a unix:// URL without a host.
        node_url = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
        if problem := _single_problem(node_url, min_socket_timeout):
            return problem, None
        return None, Topology("single", node_url, durability=durability)
    kind, node_scheme = _MULTI_SCHEMES[parts.scheme]
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes, problem = _nodes(hosts)
    if problem:
        return problem, None
    service = None
    path = parts.path
    if kind == "sentinel":
        service, path = parts.path.strip("/"), ""
        if not _SERVICE_NAME.fullmatch(service):
            return "needs the service name the sentinels watch as its path: /mymaster", None
    elif path not in ("", "/"):
        return "a cluster has one database: remove the path after the hosts", None
    if kind == "cluster" and any(name == "db" for name, _ in query):
        return "a cluster has one database: remove ?db=", None
    if kind == "cluster" and any(name in ours for name in _SENTINEL_OPTIONS):
        return "option sentinel_* applies only to redis+sentinel:// URLs", None
    host, port = nodes[0]
    netloc = (f"{userinfo}@" if userinfo else "") + f"{_bracketed(host)}:{port}"
    node_url = parts._replace(scheme=node_scheme, netloc=netloc, path=path, query=rest).geturl()
    if problem := _single_problem(node_url, min_socket_timeout):
        return problem, None
    return None, Topology(
        kind,
        node_url,
        nodes,
        service,
        durability,
        sentinel_username=ours.get("sentinel_username"),
        sentinel_password=ours.get("sentinel_password"),
    )


def _single_problem(node_url: str, min_socket_timeout: float) -> str | None:
    return redis_url_problem(node_url, min_socket_timeout=min_socket_timeout)


def _durability(options: dict[str, str]) -> tuple[Durability, str | None]:
    try:
        replicas = int(options.get("wait_replicas", "0"))
        timeout_ms = int(options.get("wait_timeout_ms", str(_DEFAULT_WAIT_TIMEOUT_MS)))
    except ValueError:
        replicas = timeout_ms = -1
    if not 0 <= replicas <= _MAX_REPLICAS:
        return (
            Durability(),
            f"option wait_replicas must be a whole number from 0 to {_MAX_REPLICAS}",
        )
    if not 1 <= timeout_ms <= 60_000:
        return Durability(), "option wait_timeout_ms must be a whole number from 1 to 60000"
    if "wait_timeout_ms" in options and not replicas:
        return Durability(), "option wait_timeout_ms needs wait_replicas"
    return Durability(replicas, timeout_ms), None


def _nodes(hosts: str) -> tuple[tuple[tuple[str, int], ...], str | None]:
    nodes = []
    for item in hosts.split(","):
        host, colon, port_text = item.rpartition(":")
        if not colon:
            return (), "needs host:port for every node, separated by commas"
        host = host.removeprefix("[").removesuffix("]")
        if problem := host_problem(host):
            return (), f"a node's host {problem}"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return (), "has an invalid port"
        nodes.append((host, int(port_text)))
    return tuple(nodes), None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else quote(host, safe=".-_")
