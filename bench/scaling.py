"""`make bench-scaling`: 1, 2 and 4 worker processes draining a queue, on one Redis and on a
3-primary Redis Cluster (one queue: one slot, one shard), then what that shard spends per email.

    .venv/bin/python -m bench.scaling [--emails 3000] [--runs 3] [--sink aiosmtpd|smtp-sink]
                                      [--shard-cost-only]

Each drain figure is the median drain rate (emails per second, from the first email received to
the last) of a pre-filled queue, as `make bench` measures it. The shard's cost
(bench/shard_cost.py) is its Redis thread's CPU time and commands per email, enqueued one by one
through the Producer (the realistic mix of emails) and drained by 1, 2 and 4 workers; the
median of the runs. The cluster comes from the tests' helpers (tests/topologies.py): six
redis-server processes on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path

from service.local.redis_server import RedisServer
from tests.topologies import Cluster, redis_cluster

from .children import Children
from .endtoend import Lab, drain_rate
from .mix_workload import emails as mix_emails
from .shard_cost import ShardRun, measure_enqueue_load, measure_shard
from .sinks import SinkKind, available_sinks
from .workload import make_tasks

PROCESSES = (1, 2, 4)
_queue_numbers = itertools.count(1)


class _ClusterLab(Lab):
    """A lab whose Redis is a cluster: each run gets a queue of its own instead of a flush."""

    async def fresh_queue(self) -> str:
        return f"scaling-{next(_queue_numbers)}"


async def measure(labs: dict[str, Lab], kind: SinkKind, emails: int, runs: int) -> None:
    """Print one line per Redis and process count."""
    tasks = make_tasks(emails)
    print(f"sink {kind}, {emails:,} emails per run, median of {runs}")
    print("redis      processes  emails/s  (runs)")
    for name, lab in labs.items():
        for processes in PROCESSES:
            rates = []
            for _ in range(runs):
                run = await drain_rate(lab, kind, processes, tasks)
                rates.append(run.rate_after_first)
            rates.sort()
            shown = ", ".join(f"{rate:.0f}" for rate in rates)
            print(f"{name:10} {processes:9} {rates[len(rates) // 2]:9.0f}  ({shown})", flush=True)


async def measure_shard_cost(
    children: Children,
    cluster: Cluster,
    workdir: Path,
    kind: SinkKind,
    *,
    emails: int,
    runs: int,
    status_records: bool,
) -> None:
    """Print one line per process count: the queue's shard's cost per email (median run by
    CPU per email), and the rate at which that shard's Redis thread would saturate."""
    tasks = [email.task() for email in mix_emails("mix", emails)]
    records = "" if status_records else ", no status records"
    print(
        f"\nthe queue's shard, per email (realistic mix, {emails:,} emails{records},"
        f" median of {runs})"
    )
    print(
        "processes  enqueue calls bytes cpu_us  drain calls bytes cpu_us  busy  drain/s"
        "  shard saturates at"
    )
    for processes in PROCESSES:
        shard_runs: list[ShardRun] = []
        for _ in range(runs):
            shard_runs.append(
                await measure_shard(
                    children, cluster.url, lambda key: cluster.primary_of(key).port, workdir,
                    queue=f"shard-cost-{next(_queue_numbers)}", kind=kind,
                    processes=processes, tasks=tasks, status_records=status_records,
                )
            )  # fmt: skip
        shard_runs.sort(key=lambda run: run.cpu_usec_per_email)
        run = shard_runs[len(shard_runs) // 2]
        enqueue, drain = run.enqueue, run.drain
        shown = ", ".join(f"{each.saturation_rate:,.0f}" for each in shard_runs)
        print(
            f"{processes:9}  {enqueue.calls_per_email:13.2f} {enqueue.net_bytes_per_email:5.0f}"
            f" {enqueue.cpu_usec_per_email:6.1f}  {drain.calls_per_email:11.2f}"
            f" {drain.net_bytes_per_email:5.0f} {drain.cpu_usec_per_email:6.1f}"
            f"  {drain.busy:4.0%}  {run.drain_rate:7,.0f}"
            f"  {run.saturation_rate:,.0f}/s ({shown})",
            flush=True,
        )
        commands = sorted(drain.calls.items(), key=lambda item: -item[1])[:6]
        print("           drain commands per email: " + ", ".join(
            f"{name} {count / drain.emails:.2f}" for name, count in commands
        ))  # fmt: skip


async def measure_enqueue_load_on_shard(cluster: Cluster, emails: int) -> None:
    """Print the queue's shard under an enqueue load from more and more connections: how its
    CPU per enqueue changes as its Redis thread gets busier, up to the rate it reaches."""
    tasks = [email.task() for email in mix_emails("mix", emails)]
    print(f"\nthe queue's shard under enqueues only (realistic mix, {emails:,} per line)")
    print("connections  enqueues/s  busy  cpu_us per enqueue  that cost's saturation")
    for connections in (1, 4, 16, 64):
        queue = f"enqueue-load-{next(_queue_numbers)}"
        port = cluster.primary_of(f"{{{queue}}}:stream").port
        cost = await measure_enqueue_load(port, queue, tasks, connections)
        print(
            f"{connections:11}  {cost.emails / cost.seconds:10,.0f}  {cost.busy:4.0%}"
            f"  {cost.cpu_usec_per_email:18.1f}  {1e6 / cost.cpu_usec_per_email:,.0f}/s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sink", choices=["aiosmtpd", "smtp-sink"])
    parser.add_argument(
        "--shard-cost-only", action="store_true", help="skip the drain rates; only the shard's cost"
    )
    parser.add_argument(
        "--no-status-records",
        action="store_true",
        help="the shard's cost without task status records (TASK_STATUS_TTL_SECONDS=0)",
    )
    options = parser.parse_args(argv)
    kind: SinkKind = options.sink or available_sinks()[-1]
    with tempfile.TemporaryDirectory() as tmp, Children() as children:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        redis.start()
        try:
            with redis_cluster(workdir / "cluster") as cluster:
                labs: dict[str, Lab] = {
                    "one redis": Lab(children, redis.url, workdir),
                    "cluster": _ClusterLab(children, cluster.url, workdir),
                }
                if not options.shard_cost_only:
                    asyncio.run(measure(labs, kind, options.emails, options.runs))
                asyncio.run(measure_enqueue_load_on_shard(cluster, 4 * options.emails))
                shard_cost = measure_shard_cost(
                    children, cluster, workdir, kind, emails=options.emails,
                    runs=options.runs, status_records=not options.no_status_records,
                )  # fmt: skip
                asyncio.run(shard_cost)
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
