"""What `?wait_replicas=1` costs: enqueue latency and a worker's drain rate, with and without it,
on a Sentinel setup and on a Redis Cluster (`make failover` runs it after the failover tests).

    .venv/bin/python -m tests.chaos.durability_cost [--enqueues 2000] [--emails 3000]

Every figure is the median of `--runs` runs on this machine: enqueue latency is one
`SyncProducer.enqueue` after another (a web request's view); the drain rate is one
`python -m service.worker` (WORKER_CONCURRENCY=20) sending a backlog to the recording SMTP
server of the tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from service import EmailTask, SyncProducer
from service.local.redis_server import free_port
from tests.chaos.failover import worker_env
from tests.conftest import WorkerProcess
from tests.smtp_server import SmtpServer
from tests.topologies import Cluster, SentinelSetup, redis_cluster, redis_sentinel


def enqueue_latencies_ms(url: str, count: int) -> list[float]:
    """Each enqueue's time, one after another."""
    task = EmailTask(to="a@example.com", subject="s", text="x")
    latencies = []
    with SyncProducer.from_url(url) as producer:
        producer.enqueue(task)  # connected
        for _ in range(count):
            started = time.perf_counter()
            producer.enqueue(task)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def drain_rate(url: str, backlog_url: str, emails: int, workdir: Path) -> float:
    """Emails per second one worker sends from a backlog of `emails`."""
    smtp = SmtpServer(port=free_port())
    smtp.start()
    try:
        task = EmailTask(to="a@example.com", subject="s", text="x")
        with SyncProducer.from_url(backlog_url) as producer:
            for start in range(0, emails, 1000):
                producer.enqueue_many([task] * min(1000, emails - start))
        worker = WorkerProcess(worker_env(url, smtp.port), workdir)
        try:
            worker.wait_for_log("worker_started")
            started = time.monotonic()
            while len(smtp.received) < emails:
                time.sleep(0.02)
            return emails / (time.monotonic() - started)
        finally:
            worker.stop()
    finally:
        smtp.stop()


def _flush(topology: Cluster | SentinelSetup) -> None:
    with topology.queue_primary().client() as client:
        client.flushall()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.durability_cost")
    parser.add_argument("--enqueues", type=int, default=2000)
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    setups: list[tuple[str, Callable[[Path], AbstractContextManager[Cluster | SentinelSetup]]]]
    setups = [("sentinel", redis_sentinel), ("cluster", redis_cluster)]
    print("topology  mode             enqueue p50 ms  p99 ms  enqueues/s  worker drain/s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, setup in setups:
            with setup(Path(tmp) / name) as topology:
                for query in ("", "?wait_replicas=1"):
                    url = topology.url + query
                    rows = []
                    for run in range(options.runs):
                        _flush(topology)
                        latencies = enqueue_latencies_ms(url, options.enqueues)
                        _flush(topology)
                        workdir = Path(tmp) / f"{name}{query}{run}"
                        workdir.mkdir()
                        rate = drain_rate(url, topology.url, options.emails, workdir)
                        rows.append((latencies, rate))
                    p50 = statistics.median(statistics.median(lat) for lat, _ in rows)
                    p99 = statistics.median(statistics.quantiles(lat, n=100)[98] for lat, _ in rows)
                    per_s = statistics.median(len(lat) / (sum(lat) / 1000) for lat, _ in rows)
                    drain = statistics.median(rate for _, rate in rows)
                    mode = query.lstrip("?") or "async"
                    print(f"{name:9} {mode:16} {p50:14.3f} {p99:7.3f} {per_s:11.0f} {drain:15.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
