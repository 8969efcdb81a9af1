"""`python -m tests.chaos`: chaos runs for one or more seeds, a table, exit 1 if any failed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shlex
import shutil
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import orjson

from tests.chaos.harness import run
from tests.chaos.plan import RunConfig, draw_faults
from tests.chaos.report import Summary, format_table, print_failures, summarize

# Where a failing seed's logs stay when no --workdir is given.
_FAILED_RUNS = Path("var/chaos")

__all__ = ["main", "run_and_judge"]


async def run_and_judge(config: RunConfig, workdir: Path) -> Summary:
    """One run of `config`, judged; `workdir/run.json` keeps the evidence beside the logs."""
    facts = await run(config, workdir)
    summary = summarize(facts)
    evidence = {
        "failures": summary.failures,
        "duplicates": summary.duplicates,
        # Each duplicate's copies (time, worker, dropped) and task id: its lines in the logs.
        "duplicate_copies": {
            name: [
                {"task_id": c.task_id, "at": c.at, "worker": c.incarnation, "dropped": c.dropped}
                for c in facts.copies
                if f"#{c.seq}" == name
            ]
            for name in summary.duplicates
        },
        "faults": [asdict(d) for d in facts.disruptions],
        "workers": {str(n): {"end": end, "at": at} for n, (end, at) in facts.endings.items()},
        "lost": summary.lost,
        "smtp_server": asdict(facts.tally),  # 4xx storm replies, slow replies, drops, 550s
    }
    (workdir / "run.json").write_bytes(orjson.dumps(evidence, option=orjson.OPT_INDENT_2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run every seed; print each run's table as it ends and all of them together at the end."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="*", help="default: one random seed")
    parser.add_argument("--duration", type=float, default=60.0, help="fault window, seconds")
    parser.add_argument("--emails", type=int, default=5000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--redis-pause", type=float, default=12.0, help="Redis SIGSTOP, seconds")
    parser.add_argument("--max-fault", type=float, default=12.0, help="longest link fault")
    parser.add_argument("--fault-gap", type=float, default=1.5, help="mean seconds between faults")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--worker-module", default="service.worker")
    parser.add_argument(
        "--topology",
        choices=["single", "cluster"],
        default="single",
        help="one redis-server (AOF), or a 3+3 Redis Cluster with failovers (?wait_replicas=1)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep every seed's logs here (default: var/chaos/<time>/<seed>, failing seeds only)",
    )
    args = parser.parse_args(argv)
    # SIGTERM acts as Ctrl-C: the run unwinds and stops every process it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    seeds = args.seeds or [secrets.randbelow(1_000_000)]
    base = RunConfig(
        seed=0,
        duration_s=args.duration,
        emails=args.emails,
        producers=args.producers,
        workers=args.workers,
        redis_pause_s=args.redis_pause,
        max_fault_s=args.max_fault,
        mean_fault_gap_s=args.fault_gap,
        drain_timeout_s=args.drain_timeout,
        worker_module=args.worker_module,
        topology=args.topology,
    )
    summaries = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in seeds:
        config = replace(base, seed=seed)
        replay = sys.argv[1:] if argv is None else argv
        planned = len(draw_faults(config))
        command = f"python -m tests.chaos {shlex.join(_with_seed(replay, seed))}"
        print(
            f"chaos seed {seed} ({config.topology}): {planned} faults planned; replay: {command}",
            flush=True,
        )
        # Without --workdir, a passing seed's logs are removed and a failing seed's are kept:
        # a failure that does not come back on replay can still be read.
        workdir = ((args.workdir or _FAILED_RUNS / stamp) / str(seed)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        summary = asyncio.run(run_and_judge(config, workdir))
        print(f"seed {seed}: {'pass' if summary.passed else 'FAIL'} "
              f"in {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
        if not summary.passed:
            print(f"seed {seed}: logs and evidence (run.json) kept in {workdir}", flush=True)
        elif not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        print_failures(summary)
        summaries.append(summary)
    if not args.workdir:  # remove the run's directory if every seed passed (it is empty)
        with contextlib.suppress(OSError):
            (_FAILED_RUNS / stamp).rmdir()
    print(format_table(summaries))
    failed = [s.seed for s in summaries if not s.passed]
    if failed:
        print(f"FAILED seeds: {failed}")
        for summary in summaries:
            print_failures(summary)
    return 1 if failed else 0


def _with_seed(argv: list[str], seed: int) -> list[str]:
    """The command line with `--seeds` narrowed to `seed`."""
    out, skipping = [], False
    for arg in argv:
        if arg == "--seeds":
            skipping = True
            continue
        if skipping and arg.lstrip("-").isdigit() and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return [*out, "--seeds", str(seed)]


if __name__ == "__main__":
    sys.exit(main())
