"""`python -m bench.mix` (`make bench-mix`): what users send, the worker beside a peer, one run.

For each network (Postfix's C `smtp-sink` on loopback, and the same behind a proxy adding
10 ms each way) and each workload (the realistic mix, then each kind alone: `mix_workload.py`),
one worker with **default settings** drains a pre-filled queue, then the peer (taskiq's Redis
Stream broker, `peer_taskiq.py`, 100 tasks at once) drains the same emails. Rates count from
the first email the sink received to the last (start-up excluded); CPU is the sender's own
(user + system, all its processes) over the same span, per email; RSS is the worker's peak.

    python -m bench.mix [--emails 3000] [--delay-ms 10] [--workloads mix,plain,html,intl,attachment]
    python -m bench.mix --profile    # then one worker draining the mix under py-spy (in .venv)
    python -m bench.mix --concurrency 10    # the worker with another WORKER_CONCURRENCY

Needs `smtp-sink` (Debian: `apt-get install postfix`, nothing is started) and makes the peer's
virtualenv in `var/bench-peer` on first use (pip: taskiq, taskiq-redis, aiosmtplib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from service import Producer
from service.local.redis_server import RedisServer, free_port
from service.worker import eventloop

from .children import Children
from .endtoend import Lab, profiled_drain
from .mix_workload import Email, emails
from .producing import BATCH_SIZE
from .profile import summarize_collapsed
from .report import describe, machine
from .sinks import SinkProcess, start_sink
from .workers import WorkerConfig, peak_rss_kib, stop_worker, worker_env

VAR: Final = Path("var/bench")
PEER_VENV: Final = Path("var/bench-peer")
PEER_PACKAGES: Final = ("taskiq", "taskiq-redis", "aiosmtplib")
# The peer runs this many tasks at once, each on a connection of its own.
PEER_TASKS: Final = 100
_REPOSITORY: Final = Path(__file__).resolve().parent.parent
_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Drain:
    """One sender draining one workload."""

    rate: float  # emails per second, first to last received
    cpu_us: float  # the sender's CPU per email, microseconds
    rss_mb: float  # the sender's peak resident set


@dataclass(frozen=True, slots=True)
class Line:
    """One row of the table: a network, a workload, the worker and the peer."""

    network: str
    workload: str
    worker: Drain
    peer: Drain

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


@contextmanager
def _network(lab: Lab, count: int, delay_ms: float) -> Iterator[tuple[SinkProcess, int]]:
    """A counting smtp-sink, and the port to send to: the sink's, or a latency proxy's."""
    sink = start_sink(lab.children, "smtp-sink", lab.workdir, [1, count])
    proxy = None
    try:
        port = sink.port
        if delay_ms:
            port = free_port()
            proxy = lab.children.spawn(
                [sys.executable, "-m", "bench.latency_proxy", "--port", str(port),
                 "--target", str(sink.port), "--delay-ms", str(delay_ms)],
                env={**os.environ, "PYTHONPATH": str(_REPOSITORY)},
            )  # fmt: skip
            _wait_for_port(port)
        yield sink, port
    finally:
        if proxy is not None:
            lab.children.stop(proxy)
        lab.children.stop(sink.process)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


async def drain_worker(
    lab: Lab, batch: list[Email], delay_ms: float, concurrency: int | None = None
) -> Drain:
    """One worker, default settings (or `concurrency`), draining `batch` from a full queue."""
    queue = await lab.fresh_queue()
    async with Producer.from_url(lab.redis_url, queue=queue) as producer:
        tasks = [email.task() for email in batch]
        for start in range(0, len(tasks), BATCH_SIZE):
            await producer.enqueue_many(tasks[start : start + BATCH_SIZE])
    with _network(lab, len(batch), delay_ms) as (sink, port):
        env = worker_env(WorkerConfig(lab.redis_url, queue, port))
        env.pop("WORKER_CONCURRENCY")  # the default is what is measured, unless asked
        if concurrency is not None:
            env["WORKER_CONCURRENCY"] = str(concurrency)
        log = (lab.workdir / f"worker-{queue}.log").open("ab")
        with log:
            worker = lab.children.spawn(
                [sys.executable, "-m", "service.worker"], env=env, cwd=lab.workdir, stdout=log
            )
        try:
            return await _measure(sink, worker, len(batch))
        finally:
            stop_worker(lab.children, worker)


async def drain_peer(lab: Lab, peer: Path, batch: list[Email], delay_ms: float) -> Drain:
    """taskiq's worker (one process, `PEER_TASKS` at once) draining the same emails."""
    queue = await lab.fresh_queue()
    emails_file = lab.workdir / f"peer-{queue}.json"
    emails_file.write_text(json.dumps([email.peer_fields() for email in batch]))
    with _network(lab, len(batch), delay_ms) as (sink, port):
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


async def measure(options: argparse.Namespace, peer: Path, workdir: Path) -> list[Line]:
    """Every network x workload, the worker then the peer; prints each line as it comes."""
    lines = []
    async with _lab(workdir) as lab:
        networks = (
            ("C sink", 0.0),
            (f"C sink + {options.delay_ms:g} ms each way", options.delay_ms),
        )
        for network, delay_ms in networks:
            for workload in options.workloads.split(","):
                batch = emails(workload, options.emails)
                ours = await drain_worker(lab, batch, delay_ms, options.concurrency)
                theirs = await drain_peer(lab, peer, batch, delay_ms)
                line = Line(network, workload, ours, theirs)
                print(_row(line), flush=True)
                lines.append(line)
        if options.profile:
            await _profile(lab, options.emails)
    return lines


async def _profile(lab: Lab, count: int) -> None:
    """One worker draining the mix to smtp-sink under py-spy; the grouped summary printed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    collapsed = (VAR / "mix-profile.txt").resolve()
    tasks = [email.task() for email in emails("mix", count)]
    await profiled_drain(lab, "smtp-sink", tasks, py_spy, output=collapsed, fmt="raw")
    print(f"\nThe mix, one worker to smtp-sink, under py-spy ({collapsed}):")
    print(summarize_collapsed(collapsed)["text"])


_HEADER: Final = (
    "| network | workload | worker | worker CPU/email | worker RSS | taskiq peer | peer CPU/email "
    "| ratio |\n|---|---|---|---|---|---|---|---|"
)


def _row(line: Line) -> str:
    ours, theirs = line.worker, line.peer
    return (
        f"| {line.network} | {line.workload} | {ours.rate:,.0f}/s | {ours.cpu_us:,.0f} µs "
        f"| {ours.rss_mb:.0f} MB | {theirs.rate:,.0f}/s | {theirs.cpu_us:,.0f} µs "
        f"| {line.ratio:.2f}x |"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; every process it starts is stopped before it returns."""
    parser = argparse.ArgumentParser(prog="python -m bench.mix", description=__doc__)
    parser.add_argument("--emails", type=int, default=3000, help="emails per drain (3000)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="proxy delay each way (10)")
    parser.add_argument("--workloads", default="mix,plain,html,intl,attachment")
    parser.add_argument("--profile", action="store_true", help="profile the mix with py-spy")
    parser.add_argument(
        "--concurrency", type=int, help="the worker's WORKER_CONCURRENCY (default: its default)"
    )
    options = parser.parse_args(argv)
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
    print(f"Machine: {describe(machine())}; {options.emails:,} emails per drain, one run each")
    print(_HEADER, flush=True)
    lines = eventloop.run(measure(options, peer, workdir))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = VAR / f"mix-{stamp}.json"
    result.write_text(json.dumps([asdict(line) for line in lines], indent=2))
    print(f"\nwritten: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
