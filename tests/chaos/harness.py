"""One chaos run: load, faults, drain, then the facts the report is built from.

Everything but the workers and redis-server runs on this process's event loop: the producers,
the counting SMTP server, the fault proxies and the injector. Producers talk to Redis directly
(their faults are not the subject); workers reach Redis and SMTP only through their proxies.

With `topology="cluster"` the Redis is a 3-primary, 3-replica cluster (tests/topologies.py) and
every client (producers, workers) uses `?wait_replicas=1`: an enqueue or a settle returns once a
replica holds it, so a failover loses nothing that returned and the judge's rule stays 0 lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from service import EmailTask, EnqueueError, Producer
from service.connection import AnyRedis, connect_redis
from service.keys import LANES, QueueKeys
from tests.chaos.attribution import Disruption, Outcome, parse_outcomes
from tests.chaos.faults import Injector
from tests.chaos.mailserver import REJECTED_PREFIX, Copy, MailServer, Tally
from tests.chaos.plan import Fault, RunConfig, draw_faults, draw_rejected
from tests.chaos.processes import ChaosRedis, WorkerFleet
from tests.topologies import Cluster, redis_cluster

__all__ = ["RunFacts", "run"]

DEAD: Final = "{emails}:dead"
KEYS: Final = QueueKeys("emails")
DELAYED: Final = "{emails}:delayed"
GROUP: Final = "workers"
_LOAD_SHARE: Final = 0.7  # producers spread the emails over this part of the fault window


@dataclass
class RunFacts:
    """What happened in a run, as recorded: the report judges it."""

    config: RunConfig
    task_ids: dict[int, str] = field(default_factory=dict)  # email number -> task id
    rejected: frozenset[int] = frozenset()
    copies: list[Copy] = field(default_factory=list)
    dead_by_task: dict[str, str] = field(default_factory=dict)  # task id -> dead reason
    dead_malformed: set[int] = field(default_factory=set)
    malformed_written: dict[int, str] = field(default_factory=dict)
    outcomes: dict[int, list[Outcome]] = field(default_factory=dict)
    endings: dict[int, tuple[str, float | None]] = field(default_factory=dict)
    exit_codes: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    disruptions: list[Disruption] = field(default_factory=list)
    fault_counts: dict[str, int] = field(default_factory=dict)
    faults_failed: list[str] = field(default_factory=list)  # could not be injected, and why
    tally: Tally = field(default_factory=Tally)
    last_enqueue_at: float = 0.0  # time.time() of the last enqueue
    drained: bool = False
    drain_s: float = 0.0
    leftover: dict[str, int] = field(default_factory=dict)  # stream, delayed, pending at the end
    status_by_task: dict[str, str] = field(default_factory=dict)  # task id -> its status record's


def worker_env(config: RunConfig) -> dict[str, str]:
    """Short timings, so that windows and recoveries fit in seconds (see docs/reliability.md)."""
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_SECURITY": "none",
        "SMTP_TIMEOUT_SECONDS": str(config.smtp_timeout_s),
        "MAIL_FROM": "Chaos <chaos@example.com>",
        "WORKER_CONCURRENCY": "10",
        "WORKER_RECLAIM_IDLE_SECONDS": str(config.reclaim_idle_s),
        "WORKER_SHUTDOWN_SECONDS": "3",
        "WORKER_RETRY_BASE_SECONDS": "0.2",
        "WORKER_RETRY_MAX_SECONDS": "1",
        # Faults stack up retries; no good email should run out of attempts in a run.
        "WORKER_MAX_ATTEMPTS": "200",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        **config.extra_env,
    }


async def run(config: RunConfig, workdir: Path) -> RunFacts:
    """Run the plan of `config.seed` against fresh Redis, SMTP server and workers."""
    facts = RunFacts(config, rejected=draw_rejected(config))
    await asyncio.to_thread(_clear, workdir)
    servers = contextlib.ExitStack()
    redis: ChaosRedis | Cluster
    if config.topology == "cluster":
        redis = await asyncio.to_thread(servers.enter_context, redis_cluster(workdir / "redis"))
        admin = connect_redis(redis.url)
        url = f"{redis.url}?wait_replicas=1"
        fleet_redis: int | str = url
    else:
        redis = ChaosRedis(workdir / "redis")
        await asyncio.to_thread(redis.start)
        servers.callback(redis.stop)
        servers.callback(redis.resume)  # a frozen server cannot stop: thawed first
        admin = connect_redis(redis.url)
        url, fleet_redis = redis.url, redis.port
    mail = MailServer(random.Random(f"{config.seed}:mail"))
    fleet = WorkerFleet(workdir, fleet_redis, mail, worker_env(config), config.worker_module)
    injector = Injector(redis, admin, fleet, mail)
    try:
        for _ in range(config.workers):
            await fleet.start()
        for incarnation in fleet.alive():  # the plan's offsets count from a running fleet
            await fleet.wait_started(incarnation)
        await _chaos(config, facts, url, injector)
        started = time.monotonic()
        facts.drained = await _drain(config, facts, admin, fleet)
        facts.drain_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # a late duplicate, if any, shows up now
        for incarnation in fleet.alive():
            await fleet.terminate(incarnation, "stopped at the end")
        await fleet.reap()
        await _collect(facts, admin, mail, fleet, injector)
    finally:
        await fleet.close()
        mail.close()
        await admin.aclose()
        await asyncio.to_thread(servers.close)
    return facts


def _clear(workdir: Path) -> None:
    """A fresh start: an AOF left by an earlier run would replay its idempotency keys."""
    shutil.rmtree(workdir / "redis", ignore_errors=True)
    for old_log in workdir.glob("worker-*.log"):
        old_log.unlink()


async def _chaos(config: RunConfig, facts: RunFacts, url: str, injector: Injector) -> None:
    """Producers and faults for `duration_s`; then every fault is undone."""
    started = time.monotonic()

    async def at(offset: float, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, offset - (time.monotonic() - started)))
        await injector.inject(fault)

    plan = draw_faults(config)
    if config.oversized_entry:
        plan.append(Fault(config.duration_s / 3, "malformed entry", variant="oversized"))
    faults = [asyncio.create_task(at(fault.at_s, fault)) for fault in plan]
    producers = [
        asyncio.create_task(_produce(config, facts, url, n)) for n in range(config.producers)
    ]
    await asyncio.sleep(config.duration_s)
    await asyncio.gather(*producers)  # each retries until all its emails are in
    for task in faults:
        task.cancel()
    await asyncio.gather(*faults, return_exceptions=True)
    injector.heal()


async def _produce(config: RunConfig, facts: RunFacts, url: str, number: int) -> None:
    """Enqueue this producer's share, paced; an idempotency key makes every retry safe."""
    seqs = range(number, config.emails, config.producers)
    pace = config.duration_s * _LOAD_SHARE / max(len(seqs), 1)
    size_rng = random.Random(f"{config.seed}:body:{number}")
    async with Producer.from_url(url, max_backlog=None) as producer:
        for seq in seqs:
            local = f"{REJECTED_PREFIX if seq in facts.rejected else 'user-'}{seq}"
            task = EmailTask(
                to=f"{local}@example.com",
                subject=f"chaos {config.seed} #{seq}",
                text="chaos " * size_rng.randint(20, 400),
                headers={"X-Chaos-Seq": str(seq)},
                priority=LANES[seq % len(LANES)],  # every lane under the same faults
            )
            while True:
                try:
                    facts.task_ids[seq] = await producer.enqueue(
                        task, idempotency_key=f"chaos:{config.seed}:{seq}"
                    )
                    facts.last_enqueue_at = max(facts.last_enqueue_at, time.time())
                    break
                except EnqueueError:
                    # Redis restarting or frozen, or no replica to hold it yet: try again.
                    await asyncio.sleep(0.2)
            await asyncio.sleep(pace)


async def _drain(config: RunConfig, facts: RunFacts, admin: AnyRedis, fleet: WorkerFleet) -> bool:
    """Wait until the queue is empty: no entry in the stream (so none pending), none delayed.

    The producers are done by then, so an empty queue stays empty: whatever was not delivered
    or dead-lettered by now never will be (the report counts it as lost).
    """
    deadline = time.monotonic() + config.drain_timeout_s
    while time.monotonic() < deadline:
        await fleet.reap()
        with contextlib.suppress(RedisError, OSError):
            facts.leftover = await _leftover(admin)
            if not any(facts.leftover.values()):
                return True
        await asyncio.sleep(0.25)
    return False


async def _leftover(admin: AnyRedis) -> dict[str, int]:
    """What is left in every lane's stream (and pending there), and in the delayed set."""
    stream = pending = 0
    for lane in QueueKeys("emails").lanes:
        if not await admin.exists(lane):
            continue
        stream += int(await admin.xlen(lane))
        with contextlib.suppress(ResponseError):  # a lane without its group holds nothing pending
            summary: Any = await admin.xpending(lane, GROUP)
            pending += int(summary["pending"])
    return {"stream": stream, "delayed": int(await admin.zcard(DELAYED)), "pending": pending}


async def _collect(
    facts: RunFacts, admin: AnyRedis, mail: MailServer, fleet: WorkerFleet, injector: Injector
) -> None:
    facts.copies = list(mail.copies)
    facts.tally = mail.tally
    facts.leftover = await _leftover(admin)
    cursor = "-"
    while True:
        batch: Any = await admin.xrange(DEAD, cursor, "+", count=50)
        if not batch:
            break
        for entry_id, fields in batch:
            if b"chaos_malformed" in fields:
                facts.dead_malformed.add(int(fields[b"chaos_malformed"]))
            else:
                reason = fields.get(b"dead_reason", b"").decode(errors="replace")
                facts.dead_by_task[fields.get(b"id", b"").decode(errors="replace")] = reason
            cursor = "(" + entry_id.decode()
    async with admin.pipeline(transaction=False) as pipe:
        for task_id in facts.task_ids.values():
            pipe.hget(KEYS.status(task_id), "s")
        states: list[Any] = await pipe.execute()
    facts.status_by_task = {
        task_id: (state or b"none").decode()
        for task_id, state in zip(facts.task_ids.values(), states, strict=True)
    }
    facts.malformed_written = dict(injector.malformed_written)
    facts.disruptions = list(injector.disruptions)
    facts.fault_counts = dict(injector.counts)
    facts.faults_failed = list(injector.failed)
    for incarnation in fleet.incarnations:
        with incarnation.log_path.open(errors="replace") as log:
            facts.outcomes[incarnation.number] = parse_outcomes(log)
        facts.endings[incarnation.number] = (incarnation.end, incarnation.ended)
        facts.exit_codes[incarnation.number] = (incarnation.end, incarnation.exit_code)
