"""End to end: emails through `python -m service.worker` subprocesses to a sink process.

`drain_rate` pre-enqueues every email, starts the workers and times until the sink has received
the last one. `paced_latency` feeds one worker at a fixed rate and measures, per email, the time
from just before `Producer.enqueue` to the sink's receipt (both CLOCK_MONOTONIC).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service import EmailTask, Producer

from .children import Children
from .floors import redis_client
from .producing import BATCH_SIZE
from .sinks import SinkKind, SinkProcess, start_sink
from .workers import CONCURRENCY, WorkerConfig, peak_rss_kib, start_worker, stop_worker

__all__ = ["DrainResult", "Lab", "LatencyResult", "drain_rate", "enqueue_paced", "paced_latency"]

_WARMUP_EMAILS = 200
_MAX_OVERLAPPING = 50
_queue_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Lab:
    """What every end-to-end run needs: our processes, our Redis, a scratch directory."""

    children: Children
    redis_url: str
    workdir: Path

    async def fresh_queue(self) -> str:
        """Empty our private Redis and name a new queue, so runs never see each other's work."""
        redis = redis_client(self.redis_url)
        try:
            await redis.flushall()
        finally:
            await redis.aclose()
        return f"bench-{next(_queue_numbers)}"


@dataclass(frozen=True, slots=True)
class DrainResult:
    """One drain of a pre-filled queue."""

    sink: SinkKind
    processes: int
    connections: int
    emails: int
    startup_s: float  # worker start to the first email received
    total_s: float  # worker start to the last email received
    peak_rss_kib: int  # the largest VmHWM among the workers
    exit_codes: list[int]

    @property
    def rate_from_start(self) -> float:
        """Emails per second, worker start-up included."""
        return self.emails / self.total_s

    @property
    def rate_after_first(self) -> float:
        """Emails per second from the first email received to the last (start-up excluded)."""
        return (self.emails - 1) / (self.total_s - self.startup_s)


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Enqueue-to-accept latency of a paced run."""

    sink: SinkKind
    target_rate: float
    achieved_rate: float
    emails: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def drain_rate(
    lab: Lab, kind: SinkKind, processes: int, tasks: list[EmailTask]
) -> DrainResult:
    """Pre-enqueue `tasks`, start `processes` workers, time until the sink has them all."""
    queue = await lab.fresh_queue()
    async with Producer.from_url(lab.redis_url, queue=queue) as producer:
        for start in range(0, len(tasks), BATCH_SIZE):
            await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
    emails = len(tasks)
    with _sink(lab, kind, [1, emails]) as sink:
        config = WorkerConfig(lab.redis_url, queue, sink.port)
        started = time.monotonic()
        with _workers(lab, config, processes) as workers:
            first = await sink.reached(1, within=60)
            last = await sink.reached(emails, within=60 + emails / 100)
            rss = [peak_rss_kib(worker.pid) or 0 for worker in workers]
            codes = [stop_worker(lab.children, worker) for worker in workers]
    return DrainResult(
        sink=kind,
        processes=processes,
        connections=processes * CONCURRENCY,
        emails=emails,
        startup_s=first - started,
        total_s=last - started,
        peak_rss_kib=max(rss),
        exit_codes=codes,
    )


async def paced_latency(
    lab: Lab, rate: float, tasks: list[EmailTask], kind: SinkKind = "aiosmtpd"
) -> LatencyResult:
    """Enqueue `tasks` one at a time at `rate` per second to one warmed-up worker."""
    queue = await lab.fresh_queue()
    total = _WARMUP_EMAILS + len(tasks)
    with _sink(lab, kind, [_WARMUP_EMAILS, total]) as sink:
        config = WorkerConfig(lab.redis_url, queue, sink.port)
        async with Producer.from_url(lab.redis_url, queue=queue) as producer:
            with _workers(lab, config, 1):
                await producer.enqueue_many(tasks[:1] * _WARMUP_EMAILS)
                await sink.reached(_WARMUP_EMAILS, within=60)
                enqueued, seconds = await enqueue_paced(producer, tasks, rate)
                await sink.reached(total, within=60 + len(tasks) / 100)
        received = sink.received_at()
    latencies = sorted(received[task_id] - at for task_id, at in enqueued.items())
    return LatencyResult(
        sink=kind,
        target_rate=rate,
        achieved_rate=len(tasks) / seconds,
        emails=len(latencies),
        p50_ms=1000 * statistics.median(latencies),
        p99_ms=1000 * latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))],
        max_ms=1000 * latencies[-1],
    )


async def profiled_drain(
    lab: Lab, kind: SinkKind, tasks: list[EmailTask], py_spy: str, *, output: Path, fmt: str
) -> None:
    """One worker under `py-spy record`: attached once the worker is idle, then fed `tasks`."""
    queue = await lab.fresh_queue()
    with _sink(lab, kind, [len(tasks)]) as sink:
        config = WorkerConfig(lab.redis_url, queue, sink.port)
        with _workers(lab, config, 1) as (worker,):
            with (lab.workdir / f"py-spy-{fmt}.log").open("ab") as log:
                recorder = lab.children.spawn(
                    [py_spy, "record", "--idle", "--full-filenames", "--rate", "250",
                     "--format", fmt, "--output", str(output), "--pid", str(worker.pid)],
                    stdout=log,
                )  # fmt: skip
            await asyncio.sleep(1.0)  # py-spy attaches
            async with Producer.from_url(lab.redis_url, queue=queue) as producer:
                for start in range(0, len(tasks), BATCH_SIZE):
                    await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
            await sink.reached(len(tasks), within=60 + len(tasks) / 50)
            stop_worker(lab.children, worker)
            # py-spy writes its output once the process it follows has exited.
            await asyncio.to_thread(recorder.wait, 60)


async def enqueue_paced(
    producer: Producer,
    tasks: list[EmailTask],
    rate: float,
    clock: Callable[[], float] = time.monotonic,
    *,
    overlap: bool = False,
) -> tuple[dict[str, float], float]:
    """Enqueue one task per call on a fixed schedule; the task ids with the `clock` time just
    before each enqueue, and the seconds it took.

    One after the other, a late enqueue delays the next ones (they catch up without sleeping);
    with `overlap`, each starts on time whatever the earlier ones are doing, as the requests of
    a web app do, so the schedule holds where one enqueue's round trip can exceed its slot. At
    most `_MAX_OVERLAPPING` run at once (the producer's connection pool has 100): a later one
    waits for one of them to end, and its time is taken when it starts.
    """
    enqueued: dict[str, float] = {}
    slots = asyncio.Semaphore(_MAX_OVERLAPPING if overlap else 1)

    async def enqueue(task: EmailTask) -> None:
        async with slots:
            at = clock()
            enqueued[await producer.enqueue(task)] = at

    pending: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    for index, task in enumerate(tasks):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not overlap:
            await enqueue(task)
            continue
        pending.add(asyncio.create_task(enqueue(task)))
        done = {running for running in pending if running.done()}
        for finished in done:
            finished.result()  # an enqueue that failed ends the run, here
        pending -= done
    await asyncio.gather(*pending)
    return enqueued, time.monotonic() - started


@contextmanager
def _sink(lab: Lab, kind: SinkKind, milestones: list[int]) -> Iterator[SinkProcess]:
    sink = start_sink(lab.children, kind, lab.workdir, milestones)
    try:
        yield sink
    finally:
        lab.children.stop(sink.process)


@contextmanager
def _workers(
    lab: Lab, config: WorkerConfig, processes: int
) -> Iterator[list[subprocess.Popen[bytes]]]:
    logs = lab.workdir / "logs"
    workers = [
        start_worker(lab.children, config, logs / f"worker-{config.queue}-{i}.log")
        for i in range(processes)
    ]
    try:
        yield workers
    finally:
        for worker in workers:
            stop_worker(lab.children, worker)
