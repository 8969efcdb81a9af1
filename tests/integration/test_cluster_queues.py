"""Several queues over a Redis Cluster's shards, served by one worker configuration.

Each queue's keys share its hash tag, so a queue is one slot on one primary; three queues whose
slots fall on the three primaries of a 3-primary cluster (`redis-cli --cluster create` gives
them slots 0-5460, 5461-10922 and 10923-16383) each get a worker started the way the template
unit `deploy/systemd/email-queue@.service` starts one: the shared environment, which names
another queue as `config/example.env` does, and the unit's ExecStart and Environment= lines
with `%i` the queue.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis.crc import key_slot

from service import EmailTask, Producer, SyncProducer, TaskState
from service.keys import QueueKeys
from tests.conftest import wait_until
from tests.smtp_server import SmtpServer
from tests.topologies import Cluster, redis_cluster

# Slots 3728, 6100 and 13262: one on each primary.
QUEUES = ("emails", "marketing", "invoices")
UNIT = Path(__file__).parents[2] / "deploy" / "systemd" / "email-queue@.service"
UNIT_PYTHON = "/opt/email-worker/.venv/bin/python"
HOST = "testhost"  # what %l (the short host name) stands for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as servers:
        yield servers


def unit_instance(queue: str, shared_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment systemd would give `email-queue@<queue>.service`, with
    `shared_env` as /etc/email-worker/worker.env (and this interpreter as the venv's)."""
    env = dict(shared_env)
    command: list[str] = []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip().replace("%i", queue).replace("%l", HOST)
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, setting = value.partition("=")
            # EnvironmentFile= wins over Environment= (systemd.exec(5)).
            env.setdefault(name, setting)
        elif key == "ExecStart":
            command = value.replace(UNIT_PYTHON, sys.executable).split()
    assert command, "the unit has an ExecStart"
    return command, env


class QueueWorker:
    """One instance of the unit, as a real subprocess; its output in a file."""

    def __init__(self, queue: str, shared_env: dict[str, str], workdir: Path) -> None:
        command, env = unit_instance(queue, shared_env)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"worker-{queue}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def _admin_json(url: str, queue: str, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "service.admin", "--queue", queue, *args, "--json"],
        capture_output=True,
        text=True,
        env={"REDIS_URL": url, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply = orjson.loads(result.stdout)
    assert isinstance(reply, dict)
    return reply


async def _enqueue(url: str, queue: str, count: int) -> list[str]:
    tasks = [
        EmailTask(to=f"{queue}-{n}@example.com", subject=f"{queue} {n}", text="x")
        for n in range(count)
    ]
    async with Producer.from_url(url, queue=queue) as producer:
        ids = [await producer.enqueue(tasks[0])]
        ids += await producer.enqueue_many(tasks[1:])
    return ids


def test_three_queues_on_three_shards_served_by_one_configuration(
    cluster: Cluster, smtp: SmtpServer, worker_env: dict[str, str], tmp_path: Path
) -> None:
    owners = {queue: cluster.primary_of(QueueKeys(queue).stream) for queue in QUEUES}
    assert len({node.port for node in owners.values()}) == 3, "one queue per primary"
    url = cluster.url
    # The shared file: the cluster, the SMTP server, and EMAIL_QUEUE as example.env has it.
    shared = {**worker_env, "REDIS_URL": url, "EMAIL_QUEUE": "emails"}
    shared["WORKER_HEARTBEAT_SECONDS"] = "1"  # the admin's per-worker counts come from it
    ids = {queue: asyncio.run(_enqueue(url, queue, 15)) for queue in QUEUES}
    with SyncProducer.from_url(url, queue="invoices") as producer:
        ids["invoices"].append(
            producer.enqueue(EmailTask(to="i@example.com", subject="s", text="x"))
        )

    workers = {queue: QueueWorker(queue, shared, tmp_path / queue) for queue in QUEUES}
    try:
        every_id = sorted(task_id for each in ids.values() for task_id in each)
        wait_until(lambda: len(smtp.received) >= len(every_id), 60, "every email delivered")
        time.sleep(0.3)  # a duplicate, if any, would arrive now
        assert sorted(smtp.task_ids()) == every_id

        for queue, owner in owners.items():
            keys = QueueKeys(queue)
            slot = key_slot(keys.stream.encode())
            status_key = keys.status(ids[queue][0])
            with owner.client() as client:
                # The owning primary computes the same slot for every key of the queue, and
                # holds them: the stream, its group, the heartbeats, the status records.
                for key in (keys.stream, keys.workers, status_key):
                    assert client.execute_command("CLUSTER", "KEYSLOT", key) == slot, key
                assert client.type(keys.stream) == b"stream"
                assert client.exists(status_key) == 1
                assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) >= 3
            for other in cluster.nodes:
                if other is owner or other.client().info("replication")["role"] != "master":
                    continue
                with other.client() as client:
                    assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0

            with SyncProducer.from_url(url, queue=queue) as producer:
                states = {producer.status(task_id).state for task_id in ids[queue]}
            assert states == {TaskState.SENT}

        # The admin views, per queue: each drained, each with its own worker.
        for queue in QUEUES:
            stats = _admin_json(url, queue, "stats")
            assert stats["queue"] == queue
            assert (stats["stream"], stats["pending"], stats["delayed"], stats["dead"]) == (
                0,
                0,
                0,
                0,
            )
            health = _admin_json(url, queue, "health")
            workers_seen = health["workers"]
            assert isinstance(workers_seen, list)
            assert [w["consumer"] for w in workers_seen] == [f"{HOST}-{queue}"]
            expected = len(ids[queue])
            wait_until(
                functools.partial(_sent_by_workers, url, queue, expected), 15, f"{queue}'s count"
            )
    finally:
        codes = {queue: worker.stop() for queue, worker in workers.items()}
        for queue, worker in workers.items():
            print(queue, worker.output()[-3000:])  # shown when the test fails
    assert codes == dict.fromkeys(QUEUES, 0)
    for worker in workers.values():
        assert '"event":"task_error"' not in worker.output()


def _sent_by_workers(url: str, queue: str, expected: int) -> bool:
    """Whether the queue's live workers' heartbeats report `expected` emails sent."""
    workers = _admin_json(url, queue, "health")["workers"]
    assert isinstance(workers, list)
    return sum(int(w["outcomes"].get("sent", 0)) for w in workers) == expected
