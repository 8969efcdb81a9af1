"""A Redis failover under load: what it loses, what it sends twice, how long the queue stops.

A producer thread enqueues through the public `SyncProducer` at a steady rate; worker
subprocesses (`python -m service.worker`) send to a recording SMTP server. Mid-run, the primary
holding the queue's slot is killed with SIGKILL and its replica promoted (by the cluster or by
the sentinels). The run then counts, from what the producer was told and what the SMTP server
received:

- lost: ids whose enqueue returned and that were never delivered, each with how long before
  the kill its enqueue returned (asynchronous replication loses the last writes only);
- duplicates: ids delivered more than once, each with when its first copy arrived (a settle the
  promoted replica never received means a resend: the first copy falls near the kill);
- the gap: from the kill to the first enqueue that returned again, and to the first delivery.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from service import EmailTask, QueueUnavailable, SyncProducer
from service.keys import QueueKeys
from tests.conftest import WorkerProcess
from tests.smtp_server import SmtpServer
from tests.topologies import Cluster, SentinelSetup, fail_over

KEYS = QueueKeys("emails")


@dataclass(frozen=True)
class FailoverConfig:
    """One run: load before and after the kill, the rate, the workers, the durability mode."""

    durable: bool
    # The replica stops reading this long before the primary dies: the writes of that time are
    # what asynchronous replication loses (on one machine its lag is otherwise well under 1 ms).
    replica_stall_s: float = 0.5
    rate_per_s: float = 300.0
    before_kill_s: float = 3.0
    after_kill_s: float = 7.0
    workers: int = 2
    drain_timeout_s: float = 45.0
    quiet_s: float = 5.0  # no new delivery for this long (above the reclaim idle time): done


@dataclass
class FailoverResult:
    """What a run measured; times are seconds relative to the kill (negative: before it)."""

    returned: int = 0
    refused: int = 0  # enqueues that raised (the queue unavailable during the switch)
    refused_maybe_enqueued: int = 0
    delivered: int = 0  # distinct ids the SMTP server received
    lost_returned_at: list[float] = field(default_factory=list)
    duplicate_first_at: list[float] = field(default_factory=list)
    enqueue_resumed_s: float | None = None  # the first enqueue returned after the kill
    delivery_paused_s: float | None = None  # the longest time without a delivery after it
    workers_alive: int = 0
    refusal_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return len(self.lost_returned_at)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_first_at)

    def line(self) -> str:
        """One line for the test's output and docs/reliability.md."""
        return (
            f"returned {self.returned}, refused {self.refused} "
            f"(maybe enqueued {self.refused_maybe_enqueued}), delivered {self.delivered}, "
            f"lost {self.lost} (returned {_span(self.lost_returned_at)} s from the kill), "
            f"duplicates {self.duplicates} (first copy {_span(self.duplicate_first_at)} s), "
            f"enqueue resumed after {_seconds(self.enqueue_resumed_s)} s, "
            f"longest delivery pause {_seconds(self.delivery_paused_s)} s, "
            f"workers alive {self.workers_alive}; refusals: {self.refusal_reasons}"
        )


def _span(values: list[float]) -> str:
    return f"{min(values):+.3f}..{max(values):+.3f}" if values else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class _Load(threading.Thread):
    """Enqueues one task at a time at `rate_per_s`, recording when each enqueue returned."""

    def __init__(self, url: str, rate_per_s: float) -> None:
        super().__init__(name="failover-load", daemon=True)
        self._url = url
        self._interval = 1 / rate_per_s
        self.stop = threading.Event()
        self.returned: dict[str, float] = {}
        self.refused: list[tuple[float, bool]] = []
        self.reasons: Counter[str] = Counter()

    def run(self) -> None:
        with SyncProducer.from_url(self._url) as producer:  # the default timeouts
            n = 0
            next_at = time.monotonic()
            while not self.stop.is_set():
                task = EmailTask(to=f"u{n}@example.com", subject=f"failover {n}", text="x")
                n += 1
                try:
                    # Every other one scheduled a second ahead: the tasks a dying primary
                    # holds unsent, whose loss a prompt worker would otherwise hide.
                    task_id = producer.enqueue(task, delay=n % 2)
                except QueueUnavailable as exc:
                    self.refused.append((time.time(), exc.maybe_enqueued))
                    self.reasons[exc.reason.split(":")[0][:60]] += 1
                    time.sleep(0.05)
                else:
                    self.returned[task_id] = time.time()
                next_at += self._interval
                time.sleep(max(0.0, next_at - time.monotonic()))


def worker_env(url: str, smtp_port: int) -> dict[str, str]:
    """A worker subprocess's settings: the topology's URL, short timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "SMTP_", "WORKER_"))}
    env.update(
        REDIS_URL=url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_SECURITY="none",
        SMTP_TIMEOUT_SECONDS="2",
        MAIL_FROM="Sender <sender@example.com>",
        WORKER_CONCURRENCY="20",
        WORKER_RECLAIM_IDLE_SECONDS="3",
        WORKER_SHUTDOWN_SECONDS="5",
        WORKER_RETRY_BASE_SECONDS="0.2",
        WORKER_RETRY_MAX_SECONDS="1",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    return env


def run_failover(
    topology: Cluster | SentinelSetup, smtp: SmtpServer, config: FailoverConfig, workdir: Path
) -> tuple[FailoverResult, list[WorkerProcess]]:
    """Load, kill the queue's primary, keep loading, drain; what happened. The workers are
    returned still running (the caller stops them and checks their exit)."""
    url = topology.url + ("?wait_replicas=1" if config.durable else "")
    workers = []
    for _ in range(config.workers):
        worker = WorkerProcess(worker_env(url, smtp.port), workdir)
        workers.append(worker)
    for worker in workers:
        worker.wait_for_log("worker_started")
    load = _Load(url, config.rate_per_s)
    load.start()
    time.sleep(config.before_kill_s)
    killed_at = fail_over(topology, replica_stall_s=config.replica_stall_s)
    time.sleep(config.after_kill_s)
    load.stop.set()
    load.join(timeout=10)
    _drain(smtp, set(load.returned), config)
    _keep_evidence(workdir, load, smtp, killed_at)
    return _judge(load, smtp, killed_at, workers), workers


def _keep_evidence(workdir: Path, load: _Load, smtp: SmtpServer, killed_at: float) -> None:
    """What the producer was told and what the SMTP server received, next to the worker
    logs: run.json."""
    with smtp.lock:
        received = [
            (str(r.message["Message-ID"]).strip("<>").split("@")[0], str(r.message["Subject"]),
             r.at - killed_at)
            for r in smtp.received
        ]  # fmt: skip
    evidence = {
        "returned": {task_id: at - killed_at for task_id, at in load.returned.items()},
        "refused": [(at - killed_at, maybe) for at, maybe in load.refused],
        "received": received,
    }
    (workdir / "run.json").write_bytes(orjson.dumps(evidence))


def _drain(smtp: SmtpServer, expected: set[str], config: FailoverConfig) -> None:
    deadline = time.monotonic() + config.drain_timeout_s
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        with smtp.lock:
            count = len(smtp.received)
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        delivered = set(smtp.task_ids())
        if expected <= delivered and time.monotonic() - last_change > config.quiet_s:
            return
        if time.monotonic() - last_change > config.quiet_s * 3:
            return  # nothing moves: what is missing is lost
        time.sleep(0.2)


def _judge(
    load: _Load, smtp: SmtpServer, killed_at: float, workers: list[WorkerProcess]
) -> FailoverResult:
    with smtp.lock:
        received = [
            (str(r.message["Message-ID"]).strip("<>").split("@")[0], r.at) for r in smtp.received
        ]
    copies = Counter(task_id for task_id, _ in received)
    first_at: dict[str, float] = {}
    for task_id, at in received:
        first_at.setdefault(task_id, at)
    result = FailoverResult(
        returned=len(load.returned),
        refused=len(load.refused),
        refused_maybe_enqueued=sum(1 for _, maybe in load.refused if maybe),
        delivered=len(copies),
        workers_alive=sum(1 for worker in workers if worker.process.poll() is None),
        refusal_reasons=dict(load.reasons),
    )
    result.lost_returned_at = sorted(
        at - killed_at for task_id, at in load.returned.items() if task_id not in copies
    )
    result.duplicate_first_at = sorted(
        first_at[task_id] - killed_at for task_id, n in copies.items() if n > 1
    )
    refused_after = [at for at, _ in load.refused if at > killed_at]
    if refused_after:
        after = [at for at in load.returned.values() if at > min(refused_after)]
        result.enqueue_resumed_s = min(after) - killed_at if after else None
    else:  # the producer never noticed
        result.enqueue_resumed_s = 0.0
    delivered_after = sorted(at for _, at in received if at > killed_at)
    if delivered_after:
        gaps = [b - a for a, b in zip([killed_at, *delivered_after], delivered_after, strict=False)]
        result.delivery_paused_s = max(gaps) if gaps else None
    return result
