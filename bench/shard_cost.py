"""What one shard of a Redis Cluster spends per email, and so when one slot bounds a queue.

A queue's keys share one hash slot, so every command of the queue runs on one primary's single
Redis thread. This reads `INFO commandstats` and `INFO cpu` on that primary before and after
each phase of one email's life:

- enqueue: `Producer.enqueue`, one email per call (as a web request sends it), 20 at a time;
- drain: `processes` worker subprocesses start and send every email to a sink (reads, settles,
  heartbeats and the workers' start-up, all counted).

CPU seconds per email are the shard's price; `1 / cpu_per_email` is the rate at which its
thread would be busy all the time. On a machine where the workers share the cores with Redis
(as here) Redis batches more replies per wake-up than it would on a host of its own, so the
figure is a cost under load; an idle shard spends more per command (more wake-ups), which does
not matter below saturation.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hiredis
import redis as redis_sync
from redis.connection import Connection

from service import EmailTask, Producer
from service.keys import QueueKeys
from service.producer.prepare import new_tasks
from service.status import DEFAULT_STATUS_TTL
from service.store import scripts

from .children import Children
from .sinks import SinkKind, start_sink
from .workers import WorkerConfig, start_worker, stop_worker

__all__ = [
    "NodeSample",
    "PhaseCost",
    "ShardRun",
    "measure_enqueue_load",
    "measure_shard",
    "node_sample",
    "phase_cost",
]

_ENQUEUES_IN_FLIGHT = 20


@dataclass(frozen=True, slots=True)
class NodeSample:
    """A Redis node's counters at one moment."""

    cpu_s: float  # used_cpu_sys + used_cpu_user: the whole process
    main_thread_cpu_s: float | None  # the same for the thread that runs commands (Redis >= 6.2)
    net_bytes: int  # total_net_input_bytes + total_net_output_bytes
    # Command -> calls and microseconds so far. Redis 7 counts the commands a script runs
    # (XADD inside EVALSHA) beside the EVALSHA itself, whose time includes theirs.
    calls: Mapping[str, int]
    usec: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PhaseCost:
    """What a node spent between two samples, for `emails` emails."""

    emails: int
    seconds: float  # wall time of the phase
    cpu_s: float
    main_thread_cpu_s: float | None
    net_bytes: int
    calls: dict[str, int]  # command -> calls in the phase (only those that ran)
    usec: dict[str, int]

    @property
    def calls_per_email(self) -> float:
        """Commands run per email, those run by scripts included."""
        return sum(self.calls.values()) / self.emails

    @property
    def net_bytes_per_email(self) -> float:
        return self.net_bytes / self.emails

    @property
    def cpu_usec_per_email(self) -> float:
        """The thread's whole CPU time (I/O and parsing included): what saturates it."""
        cpu = self.main_thread_cpu_s if self.main_thread_cpu_s is not None else self.cpu_s
        return 1e6 * cpu / self.emails

    @property
    def busy(self) -> float:
        """Share of the phase's wall time the node's command thread was on a CPU."""
        cpu = self.main_thread_cpu_s if self.main_thread_cpu_s is not None else self.cpu_s
        return cpu / self.seconds if self.seconds > 0 else 0.0


def node_sample(
    cpu: Mapping[str, Any], stats: Mapping[str, Any], commandstats: Mapping[str, Any]
) -> NodeSample:
    """A sample from redis-py's parsed `INFO cpu`, `INFO stats` and `INFO commandstats`."""
    main: float | None = None
    if "used_cpu_sys_main_thread" in cpu:
        main = float(cpu["used_cpu_sys_main_thread"]) + float(cpu["used_cpu_user_main_thread"])
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for name, counters in commandstats.items():
        command = name.removeprefix("cmdstat_")
        calls[command] = int(counters["calls"])
        usec[command] = int(counters["usec"])
    cpu_s = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    net = int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])
    return NodeSample(cpu_s=cpu_s, main_thread_cpu_s=main, net_bytes=net, calls=calls, usec=usec)


def phase_cost(before: NodeSample, after: NodeSample, emails: int, seconds: float) -> PhaseCost:
    """What the node spent from `before` to `after` (commands that did not run are left out;
    the INFO calls that took the samples are not subtracted: two calls, a few microseconds)."""
    calls = {
        command: count - before.calls.get(command, 0)
        for command, count in after.calls.items()
        if count > before.calls.get(command, 0)
    }
    usec = {command: after.usec[command] - before.usec.get(command, 0) for command in calls}
    main: float | None = None
    if after.main_thread_cpu_s is not None and before.main_thread_cpu_s is not None:
        main = after.main_thread_cpu_s - before.main_thread_cpu_s
    return PhaseCost(
        emails=emails,
        seconds=seconds,
        cpu_s=after.cpu_s - before.cpu_s,
        main_thread_cpu_s=main,
        net_bytes=after.net_bytes - before.net_bytes,
        calls=calls,
        usec=usec,
    )


@dataclass(frozen=True, slots=True)
class ShardRun:
    """One queue on one shard: its emails enqueued, then drained by `processes` workers."""

    processes: int
    enqueue: PhaseCost
    drain: PhaseCost

    @property
    def cpu_usec_per_email(self) -> float:
        return self.enqueue.cpu_usec_per_email + self.drain.cpu_usec_per_email

    @property
    def saturation_rate(self) -> float:
        """Emails/s (enqueued and delivered) at which the shard's thread would never rest."""
        return 1e6 / self.cpu_usec_per_email

    @property
    def drain_rate(self) -> float:
        return self.drain.emails / self.drain.seconds


def _sample(port: int) -> NodeSample:
    with redis_sync.Redis(port=port, socket_timeout=10) as client:
        return node_sample(client.info("cpu"), client.info("stats"), client.info("commandstats"))


async def _enqueue_one_by_one(
    url: str, queue: str, tasks: list[EmailTask], *, status_records: bool
) -> None:
    ttl = DEFAULT_STATUS_TTL if status_records else timedelta(0)
    async with Producer.from_url(url, queue=queue, max_backlog=None, status_ttl=ttl) as producer:
        # The first alone: redis-py 8.1's cluster client maps the slots on its first command,
        # and twenty commands racing to do it close each other's connections.
        await producer.enqueue(tasks[0])
        pending = iter(tasks[1:])

        async def enqueue_each() -> None:
            for task in pending:  # the coroutines share one iterator
                await producer.enqueue(task)

        await asyncio.gather(*(enqueue_each() for _ in range(_ENQUEUES_IN_FLIGHT)))


async def measure_shard(
    children: Children,
    url: str,
    port_of: Callable[[str], int],
    workdir: Path,
    *,
    queue: str,
    kind: SinkKind,
    processes: int,
    tasks: list[EmailTask],
    status_records: bool = True,
) -> ShardRun:
    """Enqueue `tasks` to `queue` on the cluster at `url`, then drain them with `processes`
    workers, sampling the primary that holds the queue (`port_of(key)`: its port)."""
    port = port_of(QueueKeys(queue).stream)
    emails = len(tasks)
    started, before = time.monotonic(), _sample(port)
    await _enqueue_one_by_one(url, queue, tasks, status_records=status_records)
    enqueued, after_enqueue = time.monotonic(), _sample(port)
    sink = start_sink(children, kind, workdir, [emails])
    try:
        config = WorkerConfig(url, queue, sink.port, status_records=status_records)
        logs = workdir / "logs"
        workers = [
            start_worker(children, config, logs / f"worker-{queue}-{i}.log")
            for i in range(processes)
        ]
        try:
            drain_started, before_drain = time.monotonic(), _sample(port)
            await sink.reached(emails, within=60 + emails / 100)
            drained, after_drain = time.monotonic(), _sample(port)
        finally:
            for worker in workers:
                stop_worker(children, worker)
    finally:
        children.stop(sink.process)
    return ShardRun(
        processes=processes,
        enqueue=phase_cost(before, after_enqueue, emails, enqueued - started),
        drain=phase_cost(before_drain, after_drain, emails, drained - drain_started),
    )


def enqueue_commands(queue: str, tasks: list[EmailTask]) -> list[bytes]:
    """Each task's ENQUEUE as the producer sends it (EVALSHA, its status record included),
    packed for the wire."""
    keys = QueueKeys(queue)
    sha = hashlib.sha1(scripts.ENQUEUE.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
    ttl_ms = scripts.status_ttl_ms(DEFAULT_STATUS_TTL)
    packer = Connection()  # type: ignore[no-untyped-call] # redis-py leaves it untyped
    commands = []
    for task in new_tasks(tasks, queue=queue, max_email_bytes=10 * 2**20):
        now_ms = time.time_ns() // 1_000_000
        call = scripts.enqueue(
            keys, [task], max_backlog=0, window_ms=1, status_ttl_ms=ttl_ms, now_ms=now_ms
        )
        words = ["EVALSHA", sha, len(call.keys), *call.keys, *call.args]
        packed = packer.pack_command(*words)  # type: ignore[no-untyped-call] # as Connection
        commands.append(b"".join(packed))
    return commands


async def _send_each_after_the_last_reply(port: int, commands: list[bytes]) -> None:
    """One connection, one command in flight: as a web request's enqueue arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader()
    try:
        for command in commands:
            writer.write(command)
            reply: Any = False
            while reply is False:
                parser.feed(await reader.read(65536))
                reply = parser.gets()
            if isinstance(reply, hiredis.ReplyError):  # handed back, not raised
                raise reply
    finally:
        writer.close()
        await writer.wait_closed()


async def measure_enqueue_load(
    port: int, queue: str, tasks: list[EmailTask], connections: int
) -> PhaseCost:
    """Enqueue `tasks` on the node at `port` (it must hold `queue`'s slot) over `connections`
    connections, each with one enqueue in flight, as fast as they go; raw sockets, so that one
    Python process can keep a Redis thread busy."""
    commands = enqueue_commands(queue, tasks)
    with redis_sync.Redis(port=port) as client:
        client.script_load(scripts.ENQUEUE)
    shares = [commands[i::connections] for i in range(connections)]
    started, before = time.monotonic(), _sample(port)
    await asyncio.gather(*(_send_each_after_the_last_reply(port, share) for share in shares))
    seconds, after = time.monotonic() - started, _sample(port)
    return phase_cost(before, after, len(commands), seconds)
