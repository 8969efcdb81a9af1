"""The queue on a Redis Cluster (3 primaries, 3 replicas) and behind Sentinel (a primary, a
replica, 3 sentinels): the producers, `python -m service.worker` and `python -m service.admin`
reach them from the documented URLs, and every flow works as on one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from service import EmailTask, Producer, QueueUnavailable, SyncProducer
from service.connection import connect_redis, connect_sync_redis_for_producer, durability_of
from service.keys import QueueKeys
from service.store import QueueStore
from tests.conftest import WorkerProcess, wait_until
from tests.smtp_server import SmtpServer
from tests.topologies import Cluster, Node, SentinelSetup, redis_cluster, redis_sentinel

KEYS = QueueKeys("emails")
Topology = Cluster | SentinelSetup


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def topology(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Topology]:
    workdir = tmp_path_factory.mktemp(request.param)
    setup = redis_cluster if request.param == "cluster" else redis_sentinel
    with setup(workdir) as servers:
        yield servers


@pytest.fixture
def empty(topology: Topology) -> Topology:
    """The topology with its data removed, on every primary."""
    nodes = topology.nodes if isinstance(topology, Cluster) else [topology.current_primary()]
    for node in nodes:
        with node.client() as client:
            if client.info("replication")["role"] == "master":
                client.flushall()
    return topology


def _admin(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.admin", *args],
        capture_output=True,
        text=True,
        env={"REDIS_URL": url, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )


def _admin_json(url: str, *args: str) -> dict[str, object]:
    result = _admin(url, *args, "--json")
    assert result.returncode == 0, result.stderr
    reply = orjson.loads(result.stdout)
    assert isinstance(reply, dict)
    return reply


async def _enqueue_async(url: str, tasks: list[EmailTask]) -> list[str]:
    async with Producer.from_url(url) as producer:
        first = await producer.enqueue(tasks[0])
        delayed = await producer.enqueue(tasks[1], delay=0.5)
        keyed = await producer.enqueue(tasks[2], idempotency_key="k")
        again = await producer.enqueue(tasks[2], idempotency_key="k")
        assert again == keyed
        return [first, delayed, keyed, *await producer.enqueue_many(tasks[3:])]


def test_enqueue_send_retry_dead_letter_stats_and_requeue(
    empty: Topology,
    smtp: SmtpServer,
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    url = empty.url
    smtp.behaviour.rcpt_replies = {
        "retry@example.com": ["451 4.3.0 try later"],
        "dead@example.com": "550 5.1.1 no such user",
    }
    tasks = [EmailTask(to=f"u{n}@example.com", subject=f"s{n}", text="x") for n in range(20)]
    tasks += [EmailTask(to=name, subject="s", text="x") for name in ("retry@example.com",)]
    ids = asyncio.run(_enqueue_async(url, tasks))
    with SyncProducer.from_url(url) as producer:
        ids.append(producer.enqueue(EmailTask(to="dead@example.com", subject="s", text="x")))
        ids += producer.enqueue_many([EmailTask(to="s@example.com", subject="s", text="x")])
    assert len(set(ids)) == 23

    worker = WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path)
    try:
        worker.wait_for_log("worker_started")
        wait_until(lambda: len(smtp.received) == 22, 30, "22 deliveries")
        wait_until(lambda: _admin_json(url, "stats")["dead"] == 1, 10, "the dead letter")
        stats = _admin_json(url, "stats")
        assert (stats["stream"], stats["pending"], stats["delayed"]) == (0, 0, 0)
        assert sorted(smtp.task_ids()) == sorted(set(ids) - {ids[21]})

        smtp.behaviour.rcpt_replies = {}
        assert _admin_json(url, "dead", "requeue", "--all")["requeued"] == 1
        wait_until(lambda: len(smtp.received) == 23, 15, "the requeued email")
        assert sorted(smtp.task_ids()) == sorted(ids)
        assert _admin_json(url, "stats")["dead"] == 0
        health = _admin(url, "health")
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        code = worker.stop()
        print(worker.output()[-5000:])  # shown when the test fails
    assert code == 0
    assert '"event":"task_error"' not in worker.output()


def test_clients_close_everything_they_open(empty: Topology) -> None:
    """Producers and the store on the topology's client; closing leaves no connection open
    (pytest turns a ResourceWarning into an error)."""

    async def run() -> None:
        client = connect_redis(empty.url)
        store = QueueStore(client, KEYS)
        assert await store.ensure_group()
        assert (await store.sizes()).stream == 0
        await store.limiter_state()
        await store.memory()
        await client.aclose()

    asyncio.run(run())
    sync_client = connect_sync_redis_for_producer(empty.url, timeout=2, connect_timeout=1)
    assert sync_client.ping()
    sync_client.close()


def test_a_new_producer_takes_a_burst_of_enqueues(empty: Topology) -> None:
    """A web app's first requests come at once: a producer whose client has not run a command
    yet enqueues 100 concurrently, each once, without an error (on a cluster, redis-py 8.1
    ran them into the connections its initialisation closed)."""

    async def run() -> list[str]:
        async with Producer.from_url(empty.url, queue=KEYS.queue, max_backlog=None) as producer:
            tasks = [EmailTask(to=f"u{i}@example.com", subject="s", text="x") for i in range(100)]
            return list(await asyncio.gather(*(producer.enqueue(t) for t in tasks)))

    ids = asyncio.run(run())
    assert len(set(ids)) == 100
    client = connect_sync_redis_for_producer(empty.url, timeout=2, connect_timeout=1)
    assert client.xlen(KEYS.stream) == 100
    client.close()


def test_the_url_carries_the_durability_mode(empty: Topology) -> None:
    client = connect_sync_redis_for_producer(
        f"{empty.url}?wait_replicas=1&wait_timeout_ms=500", timeout=2, connect_timeout=1
    )
    try:
        assert (durability_of(client).replicas, durability_of(client).timeout_ms) == (1, 500)
    finally:
        client.close()


def test_durable_enqueues_wait_for_the_replica_and_fail_without_one(empty: Topology) -> None:
    """With `?wait_replicas=1` an enqueue returns once the replica holds it; asking for more
    replicas than exist makes it fail, saying it may have been enqueued."""
    task = EmailTask(to="a@example.com", subject="s", text="x")

    async def run(url: str) -> str:
        async with Producer.from_url(url) as producer:
            return await producer.enqueue(task)

    task_id = asyncio.run(run(f"{empty.url}?wait_replicas=1"))
    with SyncProducer.from_url(f"{empty.url}?wait_replicas=1") as producer:
        assert producer.enqueue_many([task, task])
    replica = empty.replica_of(empty.queue_primary())
    with replica.client() as client:
        if isinstance(empty, Cluster):
            client.execute_command("READONLY")  # a cluster's replica answers reads only then
        wait_until(lambda: client.xlen(KEYS.stream) == 3, 5, "the replica's copy")
        ids = [fields[b"id"].decode() for _, fields in client.xrange(KEYS.stream)]
    assert ids[0] == task_id

    with pytest.raises(QueueUnavailable) as caught:
        asyncio.run(run(f"{empty.url}?wait_replicas=2&wait_timeout_ms=100"))
    assert caught.value.maybe_enqueued
    assert "1 of 2 replicas confirmed the enqueue within 100 ms" in str(caught.value)
    with (
        pytest.raises(QueueUnavailable, match="1 of 2 replicas"),
        SyncProducer.from_url(f"{empty.url}?wait_replicas=2&wait_timeout_ms=100") as producer,
    ):
        producer.enqueue(task)


def test_a_producer_does_not_run_an_enqueue_again_after_a_lost_reply(empty: Topology) -> None:
    """A reply that times out may follow a command that ran: the producer says so and does not
    send it again (redis-py's cluster client would, and the task would be sent twice)."""
    primary = empty.queue_primary()
    task = EmailTask(to="a@example.com", subject="s", text="x")
    with SyncProducer.from_url(empty.url, timeout=0.3, connect_timeout=0.3) as producer:
        producer.enqueue(task)  # connected, the slots mapped
        # The enqueue runs once the server wakes, its reply too late.
        with _stalled(primary), pytest.raises(QueueUnavailable) as caught:
            producer.enqueue(task)
    assert caught.value.maybe_enqueued

    async def enqueue_async() -> None:
        async with Producer.from_url(empty.url, timeout=0.3, connect_timeout=0.3) as producer:
            await producer.enqueue(task)
            with _stalled(primary), pytest.raises(QueueUnavailable) as caught:
                await producer.enqueue(task)
        assert caught.value.maybe_enqueued

    asyncio.run(enqueue_async())
    with primary.client() as client:
        wait_until(lambda: client.xlen(KEYS.stream) >= 4, 5, "the enqueues that ran late")
        time.sleep(0.5)  # a retry, if there were one, would have landed by now
        assert client.xlen(KEYS.stream) == 4


@contextlib.contextmanager
def _stalled(node: Node, seconds: float = 0.6) -> Iterator[None]:
    """`node` asleep (DEBUG SLEEP) for `seconds` from a moment after the block begins: what it
    is sent meanwhile runs when it wakes. The block waits for it to wake before it ends."""
    with socket.create_connection(("127.0.0.1", node.port)) as connection:
        connection.sendall(b"DEBUG SLEEP %.1f\r\n" % seconds)
        # An idle server reads it at once. It wakes before a retry would come (the timeout is
        # 0.3 s): a retried command would then run, or succeed.
        time.sleep(0.1)
        yield
        connection.settimeout(seconds + 5)
        assert connection.recv(16).startswith(b"+OK")
