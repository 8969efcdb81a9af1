"""`python -m bench.kinds`: a real worker's CPU per email for each kind of email.

    python -m bench.kinds                 # 3,000 emails of each kind, smtp-sink if installed
    python -m bench.kinds --emails 1000

For each kind (`bench.render.KINDS`, plus the realistic mix: 40% plain, 30% text+html, 30%
non-ascii) the queue is filled first, then one worker (`python -m service.worker`, 10
connections) drains it into a sink. The worker's CPU time (user + system, from /proc) is read
when the sink has received the first email and again at the last: start-up is left out. Printed
in microseconds per email, with each kind's ratio to the plain kind.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from pathlib import Path

from service import EmailTask, Producer
from service.local.redis_server import RedisServer

from .children import Children
from .render import KINDS, print_kinds
from .sinks import SinkKind, available_sinks, start_sink
from .workers import WorkerConfig, start_worker, stop_worker

_TICKS = os.sysconf("SC_CLK_TCK")
_MIX = ("plain",) * 4 + ("text+html",) * 3 + ("non-ascii",) * 3


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _tasks(kind: str, count: int) -> list[EmailTask]:
    if kind == "mix":
        names = itertools.islice(itertools.cycle(_MIX), count)
        return [EmailTask(**KINDS[name](i)) for i, name in enumerate(names)]
    return [EmailTask(**KINDS[kind](i)) for i in range(count)]


async def _drain(
    children: Children,
    redis: RedisServer,
    workdir: Path,
    sink_kind: SinkKind,
    tasks: list[EmailTask],
) -> float:
    """Worker CPU per email (µs) to drain `tasks` into a new sink."""
    queue = f"kinds-{time.monotonic_ns()}"
    async with Producer.from_url(redis.url, queue=queue, max_backlog=None) as producer:
        for start in range(0, len(tasks), 1_000):
            await producer.enqueue_many(tasks[start : start + 1_000])
    sink = start_sink(children, sink_kind, workdir, [1, len(tasks)])
    worker = start_worker(
        children, WorkerConfig(redis.url, queue, sink.port), workdir / f"worker-{queue}.log"
    )
    try:
        await sink.reached(1, within=60)
        first = _cpu_seconds(worker.pid)
        await sink.reached(len(tasks), within=60 + len(tasks) / 50)
        last = _cpu_seconds(worker.pid)
    finally:
        stop_worker(children, worker)
        children.stop(sink.process)
    return (last - first) / (len(tasks) - 1) * 1e6


async def _measure(emails: int, sink_kind: SinkKind) -> dict[str, float | None]:
    results: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-kinds-") as scratch, Children() as children:
        workdir = Path(scratch)
        redis = RedisServer(workdir / "redis")
        redis.start()
        try:
            for kind in (*KINDS, "mix"):
                try:
                    tasks = _tasks(kind, emails)
                except ValueError:  # a release without this kind of email
                    results[kind] = None
                    continue
                results[kind] = await _drain(children, redis, workdir, sink_kind, tasks)
        finally:
            redis.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=3_000)
    args = parser.parse_args()
    sink_kind = available_sinks()[-1]  # smtp-sink where Postfix is installed
    results = asyncio.run(_measure(args.emails, sink_kind))
    print(f"worker CPU per email, {args.emails:,} emails per kind, sink {sink_kind}")
    print_kinds(results)


if __name__ == "__main__":
    main()
