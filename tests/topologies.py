"""Highly available Redis setups for the tests, on free ports: a Redis Cluster (3 primaries, 3
replicas) and a Sentinel setup (1 primary, 1 replica, 3 sentinels), each a set of real
redis-server processes that a test can kill (SIGKILL) to force a failover (`fail_over`: used by
the failover tests and by the chaos runs on a cluster)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync
from redis.crc import key_slot

from service.local.redis_server import find_redis_server, free_port

# Fast failure detection: a killed primary's replica takes over within about 2 seconds.
_CLUSTER_NODE_TIMEOUT_MS = 1_000
_SENTINEL_DOWN_AFTER_MS = 1_000


@dataclass
class Node:
    """One redis-server (a cluster node, a primary or replica, or a sentinel)."""

    port: int
    workdir: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [find_redis_server(), *self.args, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.workdir.resolve()), "--logfile", "redis.log", "--save", "",
             "--maxmemory-policy", "noeviction",
             "--enable-debug-command", "local"],  # DEBUG SLEEP stalls a node (Redis >= 7)
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_ping(self.port, self.process)

    def kill(self) -> None:
        """SIGKILL: what it had not yet replicated is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: it stops reading (a replica falls behind its primary) until `resume`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(port=self.port, socket_timeout=5)


def _wait_for_ping(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited")
        try:
            with redis_sync.Redis(port=port, socket_timeout=1) as client:
                client.ping()
        except redis_sync.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


@dataclass
class Cluster:
    """A Redis Cluster of 3 primaries, each with one replica."""

    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The service's URL for it, naming two seed nodes."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port},127.0.0.1:{self.nodes[1].port}"

    def primary_of(self, key: str) -> Node:
        """The node serving `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with node.client() as client:
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(each for each in self.nodes if each.port == port)
        raise RuntimeError("no node answers CLUSTER SLOTS")

    def queue_primary(self) -> Node:
        """The primary holding the queue `emails`."""
        return self.primary_of("{emails}:stream")

    def replica_of(self, primary: Node) -> Node:
        """The node replicating `primary`."""
        for node in self.nodes:
            if node is primary or node.process is None or node.process.poll() is not None:
                continue
            with node.client() as client:
                info = client.info("replication")
            if info.get("role") == "slave" and int(info["master_port"]) == primary.port:
                return node
        raise RuntimeError("no replica")

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and every slot is served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.process and n.process.poll() is None]
            try:
                states = [_cluster_info(node) for node in live]
            except redis_sync.RedisError:
                states = []
            if states and all(info.get("cluster_state") == "ok" for info in states):
                return
            time.sleep(0.1)
        raise AssertionError("the cluster did not become healthy")

    def wait_replicas_linked(self, timeout: float = 30) -> None:
        """Until each of the 3 replicas has its link to its primary up (after a failover: the
        restarted node has synced from the one that took over)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            linked = 0
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                try:
                    with node.client() as client:
                        info = client.info("replication")
                except redis_sync.RedisError:
                    continue  # still loading, or going down
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    linked += 1
            if linked == 3:
                return
            time.sleep(0.1)
        raise AssertionError("the cluster's replicas did not link")


def _cluster_info(node: Node) -> dict[str, str]:
    with node.client() as client:
        text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


@contextlib.contextmanager
def redis_cluster(workdir: Path) -> Iterator[Cluster]:
    """A 3-primary, 3-replica cluster on free ports, until the block ends."""
    cluster = Cluster()
    options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
               "--cluster-node-timeout", str(_CLUSTER_NODE_TIMEOUT_MS),
               "--appendonly", "no"]  # fmt: skip
    try:
        for index in range(6):
            # Its own bus port: the default (port + 10000) fails for free ports above 55535.
            bus = ["--cluster-port", str(free_port())]
            node = Node(free_port(), workdir / f"node{index}", [*options, *bus])
            cluster.nodes.append(node)
            node.start()
        redis_cli = str(Path(find_redis_server()).with_name("redis-cli"))
        subprocess.run(
            [redis_cli, "--cluster", "create",
             *(f"127.0.0.1:{node.port}" for node in cluster.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        cluster.wait_healthy()
        cluster.wait_replicas_linked()
        yield cluster
    finally:
        for node in cluster.nodes:
            node.stop()


@dataclass
class SentinelSetup:
    """One primary, one replica and three sentinels watching them as `service`."""

    primary: Node
    replica: Node
    sentinels: list[Node]
    service: str = "mymaster"

    @property
    def url(self) -> str:
        """The service's URL for it."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def queue_primary(self) -> Node:
        """The primary (of every queue)."""
        return self.current_primary()

    def replica_of(self, primary: Node) -> Node:
        """The node replicating `primary`."""
        return self.replica if primary is self.primary else self.primary

    def restart_as_replica(self, node: Node) -> None:
        """Start `node` again, empty, replicating the current primary: what the sentinels
        would tell it once they see it back (after up to their 10 s INFO period)."""
        primary = self.current_primary()
        args = node.args
        if "--replicaof" in args:
            at = args.index("--replicaof")
            args = args[:at] + args[at + 3 :]
        node.args = [*args, "--replicaof", "127.0.0.1", str(primary.port)]
        node.start()

    def current_primary(self) -> Node:
        """The node the sentinels name as the primary now."""
        for sentinel in self.sentinels:
            if sentinel.process is None or sentinel.process.poll() is not None:
                continue
            with sentinel.client() as client:
                _, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
                )
            port = int(port)
            return next(n for n in (self.primary, self.replica) if n.port == port)
        raise RuntimeError("no sentinel answers")


@contextlib.contextmanager
def redis_sentinel(workdir: Path) -> Iterator[SentinelSetup]:
    """A primary, its replica and three sentinels on free ports, until the block ends."""
    primary = Node(free_port(), workdir / "primary", ["--appendonly", "no"])
    replica = Node(free_port(), workdir / "replica", ["--appendonly", "no"])
    replica.args += ["--replicaof", "127.0.0.1", str(primary.port)]
    sentinels: list[Node] = []
    setup = SentinelSetup(primary, replica, sentinels)
    try:
        primary.start()
        replica.start()
        for index in range(3):
            directory = workdir / f"sentinel{index}"
            directory.mkdir(parents=True)
            config = directory / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {setup.service} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {setup.service} {_SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {setup.service} 5000\n"
                f"sentinel parallel-syncs {setup.service} 1\n"
            )
            node = Node(free_port(), directory, [str(config), "--sentinel"])
            sentinels.append(node)
            node.start()
        _wait_sentinels_see_replica(setup)
        _wait_linked(replica)
        yield setup
    finally:
        for node in (*sentinels, replica, primary):
            node.stop()


def _wait_linked(replica: Node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with replica.client() as client:
            if client.info("replication").get("master_link_status") == "up":
                return
        time.sleep(0.05)
    raise AssertionError("the replica did not link to its primary")


def _wait_sentinels_see_replica(setup: SentinelSetup, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = 0
        for sentinel in setup.sentinels:
            with sentinel.client() as client:
                replicas = client.execute_command("SENTINEL", "REPLICAS", setup.service)
                others = client.execute_command("SENTINEL", "SENTINELS", setup.service)
            if replicas and len(others) == 2:
                seen += 1
        if seen == 3:
            return
        time.sleep(0.1)
    raise AssertionError("the sentinels did not find the replica and each other")


def _wait_for_new_primary(
    topology: Cluster | SentinelSetup, old: Node, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if topology.queue_primary() is not old:
                return
        except (redis_sync.RedisError, RuntimeError):
            pass  # a node that is going down, or none answering yet
        time.sleep(0.1)
    raise AssertionError("no replica took over")


def fail_over(topology: Cluster | SentinelSetup, *, replica_stall_s: float = 0.0) -> float:
    """SIGKILL the primary holding the queue, wait for its replica to take over, then start the
    killed node again as a replica of the new primary; returns when the kill was (time.time()).

    With `replica_stall_s`, the replica is cut off that long before the kill: what the primary
    acknowledged in that time is what asynchronous replication loses.
    """
    victim = topology.queue_primary()
    if replica_stall_s > 0:
        replica = topology.replica_of(victim)
        # Stopped, and its link closed by the primary, so that what the primary acknowledges
        # from now on reaches no replica (a stopped replica would still find the bytes already
        # sent in its socket buffer).
        replica.pause()
        with victim.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        time.sleep(replica_stall_s)
    killed_at = time.time()
    victim.kill()
    if replica_stall_s > 0:
        replica.resume()
    # The dead primary comes back (empty, as a supervisor restarts it) once the replica took
    # over, and becomes its replica: the durability mode has a replica to wait for again.
    _wait_for_new_primary(topology, victim)
    if isinstance(topology, Cluster):
        victim.start()  # the cluster makes it a replica of the node that took over
    else:
        topology.restart_as_replica(victim)
    return killed_at
