"""`bench.mix`'s latency phase: enqueue-to-accept on the realistic mix at half the drain rate.

One worker with default settings and the producer, warmed up by the same kind of traffic
(connections open, the producer's pool grown to what the pace needs, code paths run), are fed
the mix one `Producer.enqueue` per email (the producer's defaults, status records included), each
started on its schedule as a web app's requests would (overlapping when Redis is slow to
answer), at half the rate the same run measured the worker draining the mix on that network.
Each email's latency runs from just before its enqueue to smtp-sink's acceptance of it, which
smtp-sink marks by closing a file of its own per message (in a tmpfs directory, so the sink
does no disk I/O); the file's time is a lower bound and a watcher process's stamp an upper one
(`bench.acceptance`). Behind the latency proxy the sink is behind it too: the time counted
includes the trip to the relay, not the worker's hearing of the 250 (one more delay).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from service import Producer

from .acceptance import Latencies, acceptance_times, latencies, read_dump
from .endtoend import Lab, enqueue_paced
from .mix_workload import Email
from .relay import relay
from .workers import WorkerConfig, peak_rss_kib, start_worker, stop_worker

__all__ = ["PacedRun", "cpu_wait_seconds", "paced_mix"]

# A tmpfs: the sink's files cost no disk I/O. mkdtemp makes a private directory in it.
_SHM: Final = Path("/dev/shm")  # noqa: S108
_REPOSITORY: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class PacedRun:
    """One paced run of the mix through one worker."""

    target_rate: float  # emails per second asked for
    achieved_rate: float  # what the producer kept up (one enqueue per call)
    latencies: Latencies  # by the watcher's stamps: upper bounds
    file_time_latencies: Latencies  # by the files' times: lower bounds
    rss_mb: float  # the worker's peak resident set
    # Of the paced phase's wall time, the share the worker spent runnable but waiting for a CPU
    # (/proc/PID/schedstat): on a shared machine, the other processes' part in the latency.
    cpu_wait_share: float


async def paced_mix(
    lab: Lab, warmup: list[Email], batch: list[Email], rate: float, delay_ms: float
) -> PacedRun:
    """Warm one default worker and the producer up with `warmup`, then feed it `batch`, both
    at `rate`; latencies of `batch` only."""
    queue = await lab.fresh_queue()
    total = len(warmup) + len(batch)
    dump = Path(tempfile.mkdtemp(prefix="bench-accept-", dir=_SHM if _SHM.is_dir() else None))
    stamps_file = lab.workdir / f"accepted-{queue}.json"
    try:
        watcher = _start_watcher(lab, dump, stamps_file)
        try:
            with relay(lab, [len(warmup), total], delay_ms, dump=dump) as (sink, port):
                config = WorkerConfig(lab.redis_url, queue, port, concurrency=None)
                worker = start_worker(lab.children, config, lab.workdir / f"worker-{queue}.log")
                try:
                    async with Producer.from_url(lab.redis_url, queue=queue) as producer:
                        # The warm-up goes the way the measured emails will, one paced
                        # enqueue each: the producer's connection pool then has the
                        # connections the pace needs before the first measured email. Grown
                        # during the phase instead, its new connections held the first
                        # enqueues for up to 65 ms, and those set the p99.
                        warm = [email.task() for email in warmup]
                        await enqueue_paced(producer, warm, rate, time.time, overlap=True)
                        await sink.reached(len(warmup), within=60 + len(warmup) / 20)
                        tasks = [email.task() for email in batch]
                        waited, started = cpu_wait_seconds(worker.pid), time.monotonic()
                        enqueued, seconds = await enqueue_paced(
                            producer, tasks, rate, time.time, overlap=True
                        )
                    last = await sink.reached(total, within=60 + len(batch) / 20)
                    wait_share = (cpu_wait_seconds(worker.pid) - waited) / (last - started)
                    rss_kib = peak_rss_kib(worker.pid) or 0
                finally:
                    stop_worker(lab.children, worker)
        finally:
            lab.children.stop(watcher)  # SIGTERM: it writes its stamps
        by_file_time, by_stamp = acceptance_times(
            read_dump(dump), json.loads(stamps_file.read_text())
        )
    finally:
        shutil.rmtree(dump, ignore_errors=True)
    return PacedRun(
        target_rate=rate,
        achieved_rate=len(batch) / seconds,
        latencies=latencies(enqueued, by_stamp),
        file_time_latencies=latencies(enqueued, by_file_time),
        rss_mb=rss_kib / 1024,
        cpu_wait_share=wait_share,
    )


def cpu_wait_seconds(pid: int) -> float:
    """How long `pid` has been runnable but not running, in all (schedstat's second field)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def _start_watcher(lab: Lab, directory: Path, out: Path) -> subprocess.Popen[bytes]:
    """`bench.accept_watch` on `directory`, once it watches."""
    watcher = lab.children.spawn(
        [sys.executable, "-m", "bench.accept_watch", str(directory), str(out)],
        env={**os.environ, "PYTHONPATH": str(_REPOSITORY)},
        stdout=subprocess.PIPE,
    )
    assert watcher.stdout is not None  # noqa: S101 - spawned with a pipe just above
    if watcher.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"bench.accept_watch failed (exit code {watcher.wait()})")
    return watcher
