"""`python -m bench.mix` (`make bench-mix`): what users send, the worker beside a peer, one run.

For each network (Postfix's C `smtp-sink` on loopback, and the same behind a proxy adding
10 ms each way) and each workload (the realistic mix, then each kind alone: `mix_workload.py`),
one worker with **default settings** drains a pre-filled queue (`--runs` times, 3 by default:
the row shows the median, as one drain of 3,000 emails lasts about a second and a shared
machine moves it by a quarter), then the peer (taskiq's Redis Stream broker, `peer_taskiq.py`,
100 tasks at once) drains the same emails once. Rates count from
the first email the sink received to the last (start-up excluded); CPU is the sender's own
(user + system, all its processes) over the same span, per email; RSS is the worker's peak.
Then, on each network, the latency phase (`mix_latency.py`): the mix enqueued one by one at half
the worker's drain rate of it, enqueue-to-accept p50/p99 from smtp-sink's own timestamps.

    python -m bench.mix [--emails 3000] [--delay-ms 10] [--workloads mix,plain,html,intl,attachment]
    python -m bench.mix --latency-emails 0    # no latency phase (2000 emails per network)
    python -m bench.mix --profile    # then one worker draining the mix under py-spy (in .venv)
    python -m bench.mix --concurrency 10    # the worker with another WORKER_CONCURRENCY
    python -m bench.mix --runs 1    # one drain of the worker per row

Needs `smtp-sink` (Debian: `apt-get install postfix`, nothing is started) and makes the peer's
virtualenv in `var/bench-peer` on first use (pip: taskiq, taskiq-redis, aiosmtplib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from service import Producer
from service.local.redis_server import RedisServer
from service.worker import eventloop

from .children import Children
from .endtoend import Lab, profiled_drain
from .mix_latency import PacedRun, paced_mix
from .mix_workload import Email, emails
from .producing import BATCH_SIZE
from .profile import summarize_collapsed
from .relay import relay
from .report import describe, machine
from .sinks import SinkProcess
from .workers import WorkerConfig, peak_rss_kib, start_worker, stop_worker

VAR: Final = Path("var/bench")
PEER_VENV: Final = Path("var/bench-peer")
PEER_PACKAGES: Final = ("taskiq", "taskiq-redis", "aiosmtplib")
# The peer runs this many tasks at once, each on a connection of its own.
PEER_TASKS: Final = 100
# Emails sent before the latency phase's clock starts: connections opened, code paths warm.
LATENCY_WARMUP: Final = 200
_REPOSITORY: Final = Path(__file__).resolve().parent.parent
_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Drain:
    """One sender draining one workload."""

    rate: float  # emails per second, first to last received
    cpu_us: float  # the sender's CPU per email, microseconds
    rss_mb: float  # the sender's peak resident set


@dataclass(frozen=True, slots=True)
class PacedLine:
    """The latency phase on one network."""

    network: str
    run: PacedRun


@dataclass(frozen=True, slots=True)
class Line:
    """One row of the table: a network, a workload, the worker and the peer."""

    network: str
    workload: str
    worker: Drain  # the median of `worker_runs`
    peer: Drain
    worker_runs: list[Drain]

    @property
    def ratio(self) -> float:
        return self.worker.rate / self.peer.rate


def ensure_peer() -> Path | None:
    """The peer's virtualenv `bin/`, made on first use (the project's dependencies untouched);
    None, having said why, when it cannot be made."""
    bin_dir = PEER_VENV.resolve() / "bin"
    if (bin_dir / "taskiq").exists():
        return bin_dir
    print(f"making the peer's virtualenv in {PEER_VENV} ({', '.join(PEER_PACKAGES)})")
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", *PEER_PACKAGES]
    for step in ([sys.executable, "-m", "venv", str(PEER_VENV)], pip):
        if subprocess.run(step, check=False).returncode != 0:  # noqa: S603
            print(
                f"cannot make the peer's virtualenv ({' '.join(step[:4])} failed): it needs "
                f"python3-venv and PyPI access for {', '.join(PEER_PACKAGES)}",
                file=sys.stderr,
            )
            return None
    return bin_dir


def median_drain(runs: list[Drain]) -> Drain:
    """The median rate and CPU per email of several drains (each taken apart), the peak RSS."""
    return Drain(
        rate=statistics.median(run.rate for run in runs),
        cpu_us=statistics.median(run.cpu_us for run in runs),
        rss_mb=max(run.rss_mb for run in runs),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its children still running (taskiq forks its workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command: state, ppid, ... utime (12th), stime (13th).
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def tree_rss_kib(pid: int) -> int:
    """The largest peak RSS among `pid` and its children."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return max(peak_rss_kib(p) or 0 for p in pids)


async def _measure(sink: SinkProcess, sender: subprocess.Popen[bytes], count: int) -> Drain:
    """Wait for the first and the last email at the sink, reading the sender's CPU at each."""
    first = await sink.reached(1, within=60)
    cpu_first = cpu_seconds(sender.pid)
    last = await sink.reached(count, within=60 + count / 20)
    cpu_last = cpu_seconds(sender.pid)
    rss = tree_rss_kib(sender.pid)
    emails_timed = count - 1
    return Drain(
        rate=emails_timed / (last - first),
        cpu_us=1e6 * (cpu_last - cpu_first) / emails_timed,
        rss_mb=rss / 1024,
    )


async def drain_worker(
    lab: Lab, batch: list[Email], delay_ms: float, concurrency: int | None = None
) -> Drain:
    """One worker, default settings (or `concurrency`), draining `batch` from a full queue."""
    queue = await lab.fresh_queue()
    async with Producer.from_url(lab.redis_url, queue=queue) as producer:
        tasks = [email.task() for email in batch]
        for start in range(0, len(tasks), BATCH_SIZE):
            await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
    with relay(lab, [1, len(batch)], delay_ms) as (sink, port):
        config = WorkerConfig(lab.redis_url, queue, port, concurrency)  # None: the default
        worker = start_worker(lab.children, config, lab.workdir / f"worker-{queue}.log")
        try:
            return await _measure(sink, worker, len(batch))
        finally:
            stop_worker(lab.children, worker)


async def drain_peer(lab: Lab, peer: Path, batch: list[Email], delay_ms: float) -> Drain:
    """taskiq's worker (one process, `PEER_TASKS` at once) draining the same emails."""
    queue = await lab.fresh_queue()
    emails_file = lab.workdir / f"peer-{queue}.json"
    emails_file.write_text(json.dumps([email.peer_fields() for email in batch]))
    with relay(lab, [1, len(batch)], delay_ms) as (sink, port):
        env = {
            **os.environ,
            "PYTHONPATH": str(_REPOSITORY),
            "PEER_REDIS_URL": lab.redis_url,
            "PEER_QUEUE": queue,
            "PEER_SMTP_PORT": str(port),
        }
        kick = [str(peer / "python"), "-m", "bench.peer_taskiq", "kick", str(emails_file)]
        await asyncio.to_thread(subprocess.run, kick, env=env, cwd=_REPOSITORY, check=True)
        log = (lab.workdir / f"peer-{queue}.log").open("ab")
        with log:
            worker = lab.children.spawn(
                [str(peer / "taskiq"), "worker", "bench.peer_taskiq:broker", "--workers", "1",
                 "--max-async-tasks", str(PEER_TASKS), "--no-configure-logging"],
                env=env, cwd=_REPOSITORY, stdout=log,
            )  # fmt: skip
        try:
            return await _measure(sink, worker, len(batch))
        finally:
            lab.children.stop(worker, timeout=10.0)


@asynccontextmanager
async def _lab(workdir: Path) -> AsyncIterator[Lab]:
    redis = RedisServer(workdir / "redis")
    with Children() as children:
        redis.start()
        try:
            yield Lab(children, redis.url, workdir)
        finally:
            redis.stop()


async def measure(
    options: argparse.Namespace, peer: Path, workdir: Path
) -> tuple[list[Line], list[PacedLine]]:
    """Every network x workload, the worker then the peer, then on each network the mix paced
    at half the worker's drain rate of it; prints each line as it comes."""
    lines, paced = [], []
    async with _lab(workdir) as lab:
        networks = (
            ("C sink", 0.0),
            (f"C sink + {options.delay_ms:g} ms each way", options.delay_ms),
        )
        for network, delay_ms in networks:
            for workload in options.workloads.split(","):
                batch = emails(workload, options.emails)
                runs = [
                    await drain_worker(lab, batch, delay_ms, options.concurrency)
                    for _ in range(options.runs)
                ]
                theirs = await drain_peer(lab, peer, batch, delay_ms)
                line = Line(network, workload, median_drain(runs), theirs, runs)
                print(_row(line), flush=True)
                lines.append(line)
        for line in lines:
            if line.workload == "mix" and options.latency_emails > 0:
                delay_ms = options.delay_ms if line.network != "C sink" else 0.0
                run = await paced_mix(
                    lab,
                    emails("mix", LATENCY_WARMUP),
                    emails("mix", options.latency_emails),
                    line.worker.rate / 2,
                    delay_ms,
                )
                paced.append(PacedLine(line.network, run))
        if paced:
            print(f"\n{_LATENCY_HEADER}")
            print("\n".join(_latency_row(line) for line in paced), flush=True)
        if options.profile:
            await _profile(lab, options.emails)
    return lines, paced


async def _profile(lab: Lab, count: int) -> None:
    """One worker draining the mix to smtp-sink under py-spy; the grouped summary printed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    collapsed = (VAR / "mix-profile.txt").resolve()
    tasks = [email.task() for email in emails("mix", count)]
    await profiled_drain(lab, "smtp-sink", tasks, py_spy, output=collapsed, fmt="raw")
    print(f"\nThe mix, one worker to smtp-sink, under py-spy ({collapsed}):")
    print(summarize_collapsed(collapsed)["text"])


_HEADER: Final = (
    "| network | workload | worker | worker CPU/email | CPU/email, each drain | worker RSS "
    "| taskiq peer | peer CPU/email | ratio |\n|---|---|---|---|---|---|---|---|---|"
)


_LATENCY_HEADER: Final = (
    "Enqueue-to-accept, the mix enqueued one by one at half the worker's drain rate above (one "
    "worker, default settings;\nupper bounds: a watcher's stamps of smtp-sink's files; the "
    "files' own times give the lower bound of p99):\n\n"
    "| network | paced at | kept up | p50 | p99 | max | p99 by file times | emails | worker RSS "
    "| worker waiting for a CPU |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _latency_row(line: PacedLine) -> str:
    run, figures = line.run, line.run.latencies
    return (
        f"| {line.network} | {run.target_rate:,.0f}/s | {run.achieved_rate:,.0f}/s "
        f"| {figures.p50_ms:.1f} ms | {figures.p99_ms:.1f} ms | {figures.max_ms:.1f} ms "
        f"| {run.file_time_latencies.p99_ms:.1f} ms | {figures.emails:,} | {run.rss_mb:.0f} MB "
        f"| {run.cpu_wait_share:.0%} of the time |"
    )


def _row(line: Line) -> str:
    ours, theirs = line.worker, line.peer
    return (
        f"| {line.network} | {line.workload} | {ours.rate:,.0f}/s | {ours.cpu_us:,.0f} µs "
        f"| {', '.join(f'{run.cpu_us:,.0f}' for run in line.worker_runs)} µs "
        f"| {ours.rss_mb:.0f} MB | {theirs.rate:,.0f}/s | {theirs.cpu_us:,.0f} µs "
        f"| {line.ratio:.2f}x |"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; every process it starts is stopped before it returns."""
    parser = argparse.ArgumentParser(prog="python -m bench.mix", description=__doc__)
    parser.add_argument("--emails", type=int, default=3000, help="emails per drain (3000)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="proxy delay each way (10)")
    parser.add_argument("--workloads", default="mix,plain,html,intl,attachment")
    parser.add_argument(
        "--latency-emails",
        type=int,
        default=2000,
        help="emails paced through the latency phase, per network (2000; 0: no phase)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="the worker's drains per row, the median reported (3); the peer drains once",
    )
    parser.add_argument("--profile", action="store_true", help="profile the mix with py-spy")
    parser.add_argument(
        "--concurrency", type=int, help="the worker's WORKER_CONCURRENCY (default: its default)"
    )
    options = parser.parse_args(argv)
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    if shutil.which("smtp-sink") is None:
        print(
            "smtp-sink (Postfix's C sink) is missing: apt-get install postfix (nothing is "
            "started; see /work/shared/FIELD-NOTES.md) and make sure /usr/sbin is on PATH",
            file=sys.stderr,
        )
        return 2
    py_spy = shutil.which("py-spy") or Path(sys.executable).parent / "py-spy"
    if options.profile and not Path(py_spy).exists():
        print("py-spy is missing: .venv/bin/pip install py-spy (make bench-profile does)")
        return 2
    peer = ensure_peer()
    if peer is None:
        return 2
    workdir = (VAR / "mix").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(
        f"Machine: {describe(machine())}; {options.emails:,} emails per drain; the worker's "
        f"figures are the median of {options.runs} drains, the peer's are of one"
    )
    print(_HEADER, flush=True)
    lines, paced = eventloop.run(measure(options, peer, workdir))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = VAR / f"mix-{stamp}.json"
    figures = {"drains": [asdict(line) for line in lines], "latency": [asdict(p) for p in paced]}
    result.write_text(json.dumps(figures, indent=2))
    print(f"\nwritten: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
