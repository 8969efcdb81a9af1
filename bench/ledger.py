"""`python -m bench.ledger`: what the task status ledger costs the worker, per email.

One idle worker is fed a batch of emails (enqueued in batches of 1,000) and sends them to a sink,
with the ledger on (TASK_STATUS_TTL_SECONDS at its default, the producer writing records) and
off (0, and a producer writing none), the two alternated run after run. Measured per email,
from the first enqueue to the last email received: the worker process's CPU time (user +
system, /proc) and Redis's (INFO cpu: the producer's and the worker's commands together).
The producer's side: `Producer.enqueue` (one task per call) and `enqueue_many` rates with and
without status records, on an empty queue. Prints medians and the on/off ratios, and writes
the figures as JSON.

python -m bench.ledger                  # 5,000 emails, 3 runs of each
python -m bench.ledger --emails 1000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from service import Producer
from service.local.redis_server import RedisServer
from service.worker import eventloop

from .children import Children
from .endtoend import Lab
from .floors import redis_client
from .producing import BATCH_SIZE, enqueue_many_rate, enqueue_rate
from .sinks import available_sinks, start_sink
from .workers import WorkerConfig, stop_worker, worker_env
from .workload import make_tasks

_TICKS = os.sysconf("SC_CLK_TCK")
_WEEK = 7 * 86_400
_SETTLE_SECONDS = 2.0
# Per setting (ledger on or off): the producer's (enqueue, enqueue_many) rates, one per run.
ProducerRates = dict[bool, list[tuple[float, float]]]


@dataclass(frozen=True, slots=True)
class LedgerRun:
    """One drain, with the ledger on or off."""

    ledger: bool
    emails: int
    seconds: float  # worker start to the last email received
    worker_cpu_s: float
    redis_cpu_s: float

    @property
    def worker_us_per_email(self) -> float:
        """Worker CPU per email, microseconds."""
        return 1e6 * self.worker_cpu_s / self.emails

    @property
    def redis_us_per_email(self) -> float:
        """Redis CPU per email, microseconds."""
        return 1e6 * self.redis_cpu_s / self.emails


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def redis_cpu_seconds(url: str) -> float:
    """Redis's own CPU time so far (INFO cpu: user + sys of the main process)."""
    redis = redis_client(url)
    try:
        info: Any = await redis.info("cpu")
    finally:
        await redis.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def drain(lab: Lab, *, ledger: bool, emails: int) -> LedgerRun:
    """Start one worker on an empty queue, let it settle, then enqueue `emails` and time until
    smtp-sink (else aiosmtpd) has them all; CPU counted from the enqueue on (no start-up)."""
    queue = await lab.fresh_queue()
    tasks = make_tasks(emails)
    ttl = timedelta(seconds=_WEEK if ledger else 0)
    kind = available_sinks()[-1]
    sink = start_sink(lab.children, kind, lab.workdir, [emails])
    try:
        config = WorkerConfig(lab.redis_url, queue, sink.port)
        env = {**worker_env(config), "TASK_STATUS_TTL_SECONDS": str(_WEEK if ledger else 0)}
        with (lab.workdir / f"worker-{queue}.log").open("ab") as out:
            worker = lab.children.spawn(
                [sys.executable, "-m", "service.worker"], env=env, cwd=lab.workdir, stdout=out
            )
        try:
            await asyncio.sleep(_SETTLE_SECONDS)  # imports, connections, start-up checks
            worker_before = cpu_seconds(worker.pid)
            redis_before = await redis_cpu_seconds(lab.redis_url)
            started = time.monotonic()
            async with Producer.from_url(lab.redis_url, queue=queue, status_ttl=ttl) as producer:
                for start in range(0, len(tasks), BATCH_SIZE):
                    await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
            last = await sink.reached(emails, within=60 + emails / 100)
            worker_cpu = cpu_seconds(worker.pid) - worker_before
            redis_cpu = await redis_cpu_seconds(lab.redis_url) - redis_before
        finally:
            stop_worker(lab.children, worker)
    finally:
        lab.children.stop(sink.process)
    return LedgerRun(ledger, emails, last - started, worker_cpu, redis_cpu)


async def producer_rates(lab: Lab, *, ledger: bool, emails: int) -> tuple[float, float]:
    """(`enqueue` rate, `enqueue_many` rate) on a fresh queue, with or without status records."""
    tasks = make_tasks(emails)
    ttl = timedelta(seconds=_WEEK if ledger else 0)
    queue = await lab.fresh_queue()
    async with Producer.from_url(lab.redis_url, queue=queue, status_ttl=ttl) as producer:
        one = await enqueue_rate(producer, tasks)
    queue = await lab.fresh_queue()
    async with Producer.from_url(lab.redis_url, queue=queue, status_ttl=ttl) as producer:
        many = await enqueue_many_rate(producer, tasks)
    return one, many


async def measure(lab: Lab, emails: int, runs: int) -> tuple[list[LedgerRun], ProducerRates]:
    """`runs` drains with the ledger and `runs` without, alternated (a warm-up run first), each
    after the producer's rates with the same setting."""
    await drain(lab, ledger=True, emails=min(emails, 500))
    results = []
    rates: ProducerRates = {False: [], True: []}
    for _ in range(runs):
        for ledger in (False, True):
            one, many = await producer_rates(lab, ledger=ledger, emails=emails)
            rates[ledger].append((one, many))
            print(
                f"ledger {'on ' if ledger else 'off'}: enqueue {one:7.0f}/s, "
                f"enqueue_many {many:7.0f}/s",
                flush=True,
            )
            run = await drain(lab, ledger=ledger, emails=emails)
            results.append(run)
            print(
                f"ledger {'on ' if ledger else 'off'}: {run.emails / run.seconds:7.0f} emails/s, "
                f"worker {run.worker_us_per_email:6.1f} us/email, "
                f"redis {run.redis_us_per_email:6.1f} us/email",
                flush=True,
            )
    return results, rates


def summary(results: list[LedgerRun], rates: ProducerRates) -> dict[str, float]:
    """Medians per setting and the on/off ratios."""

    def median(ledger: bool, figure: str) -> float:
        return float(statistics.median(getattr(r, figure) for r in results if r.ledger is ledger))

    out: dict[str, float] = {}
    for figure in ("worker_us_per_email", "redis_us_per_email"):
        on, off = median(True, figure), median(False, figure)
        out[f"{figure}_on"] = round(on, 1)
        out[f"{figure}_off"] = round(off, 1)
        out[f"{figure}_ratio"] = round(on / off, 3)
    rate_on = statistics.median(r.emails / r.seconds for r in results if r.ledger)
    rate_off = statistics.median(r.emails / r.seconds for r in results if not r.ledger)
    out["rate_on"], out["rate_off"] = round(rate_on), round(rate_off)
    for index, name in enumerate(("enqueue", "enqueue_many")):
        on = statistics.median(run[index] for run in rates[True])
        off = statistics.median(run[index] for run in rates[False])
        out[f"{name}_per_s_on"], out[f"{name}_per_s_off"] = round(on), round(off)
        out[f"{name}_ratio"] = round(on / off, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the medians; write the JSON next to the other results."""
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument("--emails", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("var/bench/ledger.json"))
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as scratch:
        workdir = Path(scratch)
        redis = RedisServer(workdir / "redis")
        try:
            with Children() as children:
                redis.start()
                lab = Lab(children, redis.url, workdir)
                results, rates = eventloop.run(measure(lab, options.emails, options.runs))
        finally:
            redis.stop()
    figures = summary(results, rates)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    options.json.parent.mkdir(parents=True, exist_ok=True)
    runs = [asdict(run) for run in results]
    producer = {("on" if on else "off"): runs for on, runs in rates.items()}
    options.json.write_bytes(orjson.dumps({"summary": figures, "runs": runs, "producer": producer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
