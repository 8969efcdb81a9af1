"""`make bench-scaling`: 1, 2 and 4 worker processes draining a queue, on one Redis and on a
3-primary Redis Cluster (one queue: one slot, one shard).

    .venv/bin/python -m bench.scaling [--emails 3000] [--runs 3] [--sink aiosmtpd|smtp-sink]

Each figure is the median drain rate (emails per second, from the first email received to the
last) of a pre-filled queue, as `make bench` measures it. The cluster comes from the tests'
helpers (tests/topologies.py): six redis-server processes on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path

from service.local.redis_server import RedisServer
from tests.topologies import redis_cluster

from .children import Children
from .endtoend import Lab, drain_rate
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sink", choices=["aiosmtpd", "smtp-sink"])
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
                asyncio.run(measure(labs, kind, options.emails, options.runs))
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
