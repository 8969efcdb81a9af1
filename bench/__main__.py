"""`python -m bench`: measure the floors, the producer and the worker; print a table, write JSON.

python -m bench                 # full run (5,000 emails, medians of 3 runs)
python -m bench --quick         # a small run, to check the harness (writes no results page)
python -m bench --profile       # also one run of the worker under py-spy (needs py-spy)
"""

from __future__ import annotations

import argparse
import functools
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from service import Producer
from service.local.redis_server import RedisServer
from service.worker import eventloop

from . import floors
from .children import Children
from .endtoend import DrainResult, Lab, drain_rate, paced_latency, profiled_drain
from .producing import (
    Paired,
    add_now_paired,
    enqueue_many_paired,
    enqueue_paired,
    median_paired,
)
from .profile import summarize_collapsed
from .report import (
    Row,
    describe,
    format_markdown,
    format_table,
    git_revision,
    machine,
    median_of,
    rate,
    ratio,
    write_json,
    write_markdown,
)
from .sinks import SinkKind, available_sinks, start_sink
from .workload import make_tasks

VAR = Path("var/bench")
# Pages of full runs, meant to be committed: docs/performance.md links here.
RESULTS = Path(__file__).resolve().parent / "results"
PROCESSES = (1, 2)
CONNECTIONS_PER_WORKER = 10


@dataclass(frozen=True, slots=True)
class Options:
    """What to run."""

    emails: int
    runs: int
    latency_seconds: float
    json: Path
    profile: bool
    quick: bool  # a harness check: its figures are not worth a results page


@dataclass
class Results:
    """Everything measured, for the table and the JSON file."""

    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def parse_options(argv: list[str] | None) -> Options:
    """Options from the command line; `--quick` shrinks every default."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--emails", type=int, help="emails per measurement (5000; quick: 1000)")
    parser.add_argument("--runs", type=int, help="runs per median (3; quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument("--json", type=Path, help="result file (var/bench/result-<time>.json)")
    parser.add_argument("--profile", action="store_true", help="profile one worker with py-spy")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Options(
        emails=args.emails or (1_000 if args.quick else 5_000),
        runs=args.runs or (1 if args.quick else 3),
        latency_seconds=2.0 if args.quick else 10.0,
        json=args.json or VAR / f"result-{stamp}.json",
        profile=args.profile,
        quick=args.quick,
    )


async def measure(lab: Lab, options: Options) -> Results:
    """Every measurement, in order; each adds its rows and raw numbers to the results."""
    results = Results()
    sinks = available_sinks()
    await measure_redis(lab, options, results)
    smtp_floors = await measure_smtp_floors(lab, options, sinks, results)
    drains = await measure_drains(lab, options, sinks, smtp_floors, results)
    await measure_latency(lab, options, drains, results)
    if options.profile:
        await profile_worker(lab, options, sinks[-1], results)
    return results


async def measure_redis(lab: Lab, options: Options, results: Results) -> None:
    """Raw redis-py floors, then the producer, each of its calls paired with the floor's."""
    count, runs = options.emails, options.runs
    redis = floors.redis_client(lab.redis_url)
    tasks = make_tasks(count)
    queue = await lab.fresh_queue()
    try:
        single, single_runs = await median_of(runs, lambda: floors.xadd_rate(redis, "f:1", count))
        piped, piped_runs = await median_of(
            runs, lambda: floors.xadd_pipelined_rate(redis, "f:2", count)
        )
        read, read_runs = await median_of(
            runs, lambda: floors.xreadgroup_ack_rate(redis, "f:3", count)
        )
        add_now = await median_paired(runs, lambda: add_now_paired(redis, "f:4", count))
        async with (
            Producer(redis, queue=queue) as producer,
            Producer(redis, queue=f"{queue}-off", status_ttl=timedelta(0)) as without_records,
        ):
            one = await median_paired(runs, lambda: enqueue_paired(producer, redis, tasks))
            off = await median_paired(runs, lambda: enqueue_paired(without_records, redis, tasks))
            many = await median_paired(runs, lambda: enqueue_many_paired(producer, redis, tasks))
    finally:
        await redis.aclose()
    after_xadd = "each call followed by a bare XADD (the floor)"
    results.rows += [
        Row("floor: redis-py XADD, one per round trip", "-", rate(single)),
        Row("floor: redis-py XADD, pipelines of 1,000", "-", rate(piped)),
        Row("floor: XREADGROUP COUNT 100 + XACK", "-", rate(read)),
        _paired_row("floor: ADD_NOW script (XADD + status record)", add_now[0], after_xadd),
        _paired_row("Producer.enqueue, one at a time", one[0], after_xadd),
        _paired_row("Producer.enqueue, status records off", off[0], after_xadd),
        _paired_row(
            "Producer.enqueue_many, 1,000 per call",
            many[0],
            "each call followed by a pipeline of 1,000 XADDs (the floor)",
        ),
    ]
    results.raw["redis"] = {
        "xadd_per_s": single_runs,
        "xadd_pipelined_per_s": piped_runs,
        "xreadgroup_xack_per_s": read_runs,
        **{
            f"{name}_and_floor_per_s": [[run.rate, run.floor] for run in samples]
            for name, samples in (
                ("add_now", add_now),
                ("enqueue", one),
                ("enqueue_records_off", off),
                ("enqueue_many", many),
            )
        },
    }


def _paired_row(measurement: str, run: Paired, notes: str) -> Row:
    return Row(measurement, "-", rate(run.rate), rate(run.floor), ratio(run.rate, run.floor), notes)


async def measure_smtp_floors(
    lab: Lab, options: Options, sinks: list[SinkKind], results: Results
) -> dict[tuple[SinkKind, int], float]:
    """Resending one prebuilt message, per sink and connection count: the faster of aiosmtplib's
    sendmail and the worker's own transaction is the floor."""
    medians: dict[tuple[SinkKind, int], float] = {}
    raw: dict[str, list[float]] = {}
    for kind in sinks:
        sink = start_sink(lab.children, kind, lab.workdir)
        try:
            for connections in (p * CONNECTIONS_PER_WORKER for p in PROCESSES):
                for lean, name in ((False, "aiosmtplib sendmail"), (True, "worker's transaction")):
                    (
                        median,
                        raw[f"{kind}/{connections}/{'lean' if lean else 'sendmail'}"],
                    ) = await median_of(
                        options.runs,
                        functools.partial(
                            floors.smtp_resend_rate,
                            sink.port,
                            connections,
                            options.emails,
                            lean=lean,
                        ),
                    )
                    medians[kind, connections] = max(median, medians.get((kind, connections), 0))
                    row = f"floor: {name} resend, {connections} connections"
                    results.rows.append(Row(row, kind, rate(median)))
        finally:
            lab.children.stop(sink.process)
    results.raw["smtp_floor_per_s"] = raw
    return medians


async def measure_drains(
    lab: Lab,
    options: Options,
    sinks: list[SinkKind],
    smtp_floors: dict[tuple[SinkKind, int], float],
    results: Results,
) -> dict[tuple[SinkKind, int], DrainResult]:
    """The worker draining a pre-filled queue, per sink and process count (median run)."""
    tasks = make_tasks(options.emails)
    medians: dict[tuple[SinkKind, int], DrainResult] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for kind in sinks:
        for processes in PROCESSES:
            runs = [await drain_rate(lab, kind, processes, tasks) for _ in range(options.runs)]
            runs.sort(key=lambda run: run.rate_after_first)
            median = medians[kind, processes] = runs[len(runs) // 2]
            raw[f"{kind}/{processes}"] = [_drain_record(run) for run in runs]
            results.rows.append(_drain_row(median, smtp_floors[kind, median.connections]))
    results.raw["end_to_end"] = raw
    return medians


def _drain_row(run: DrainResult, floor: float) -> Row:
    plural = "es" if run.processes > 1 else ""
    return Row(
        f"worker x{run.processes} process{plural}, {run.emails:,} queued",
        run.sink,
        rate(run.rate_after_first),
        rate(floor),
        ratio(run.rate_after_first, floor),
        f"excl. start-up; incl. start-up {run.rate_from_start:,.0f}/s "
        f"(start-up {run.startup_s:.2f} s); peak RSS {run.peak_rss_kib / 1024:.0f} MiB",
    )


def _drain_record(run: DrainResult) -> dict[str, Any]:
    return {
        **asdict(run),
        "rate_after_first_per_s": run.rate_after_first,
        "rate_from_start_per_s": run.rate_from_start,
    }


async def measure_latency(
    lab: Lab, options: Options, drains: dict[tuple[SinkKind, int], DrainResult], results: Results
) -> None:
    """Latency at half the rate one worker reached against the recording (aiosmtpd) sink."""
    target = drains["aiosmtpd", 1].rate_after_first / 2
    tasks = make_tasks(max(100, round(target * options.latency_seconds)))
    result = await paced_latency(lab, target, tasks)
    note = f"paced at {result.achieved_rate:,.0f}/s (half of max), {result.emails:,} emails"
    name = "latency enqueue -> SMTP accept"
    results.rows += [
        Row(f"{name}, p50", result.sink, f"{result.p50_ms:.1f} ms", notes=note),
        Row(
            f"{name}, p99",
            result.sink,
            f"{result.p99_ms:.1f} ms",
            notes=f"max {result.max_ms:.1f} ms",
        ),
    ]
    results.raw["latency"] = asdict(result)


async def profile_worker(lab: Lab, options: Options, kind: SinkKind, results: Results) -> None:
    """One worker draining under py-spy: a flame graph SVG and a grouped summary."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tasks = make_tasks(options.emails)
    stamp = options.json.stem.removeprefix("result-")
    svg = VAR / f"profile-{stamp}.svg"
    collapsed = VAR / f"profile-{stamp}.txt"
    await profiled_drain(lab, kind, tasks, py_spy, output=svg.resolve(), fmt="flamegraph")
    await profiled_drain(lab, kind, tasks, py_spy, output=collapsed.resolve(), fmt="raw")
    results.raw["profile"] = {"svg": str(svg), "collapsed": str(collapsed), "sink": kind}
    results.raw["profile_summary"] = summarize_collapsed(collapsed)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; every process it starts is stopped before it returns."""
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.now(UTC)
    info = machine()
    workdir = (VAR / "run").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    redis = RedisServer(workdir / "redis")
    try:
        with Children() as children:
            redis.start()
            # The floors run on the loop the worker runs on, so the ratios compare like with like.
            results = eventloop.run(measure(Lab(children, redis.url, workdir), options))
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    finally:
        redis.stop()
    table = format_table(results.rows)
    profile_text = results.raw.get("profile_summary", {}).get("text", "")
    print(f"Machine: {describe(info)}")
    print(f"Emails per run: {options.emails:,}; medians of {options.runs} run(s)\n")
    print(table)
    if profile_text:
        print("\n" + profile_text)
    write_json(
        options.json, {"machine": info, "options": asdict(options), "table": table, **results.raw}
    )
    print(f"\nwritten: {options.json}")
    if not options.quick:
        page = format_markdown(
            started=started,
            info=info,
            revision=git_revision(),
            emails=options.emails,
            runs=options.runs,
            table=table,
            extra=profile_text,
        )
        print(f"written: {write_markdown(RESULTS, started, page)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
