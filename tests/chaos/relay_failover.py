"""Relay failover, measured: the primary relay stopped under load, then started again.

python -m tests.chaos.relay_failover --runs 5 [--emails 2000]

Each run: a fresh redis-server, two SMTP servers (primary and backup, aiosmtpd), one worker
process (`SMTP_RELAYS_FILE`, failover mode, 10 connections) and a backlog of emails. Once the
primary has taken a fifth of them it is stopped (its open sessions cut, new ones refused); the
run measures how long until the backup accepts its first email and the longest pause between
two accepts over both servers, then counts lost and duplicated emails once everything is sent.
Then the primary starts again on its port and the run measures how long until it takes mail
again. Figures go to docs/operations.md#several-relays.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from service import EmailTask
from service.local.redis_server import RedisServer, free_port
from tests.conftest import enqueue, wait_until
from tests.smtp_server import SmtpServer

__all__ = ["FailoverRun", "run_failover"]

_CONCURRENCY = 10


@dataclass(frozen=True, slots=True)
class FailoverRun:
    """What one run measured."""

    emails: int
    failover_s: float  # from the primary's stop to the backup's first accept
    longest_gap_s: float  # the longest time without any accept, around the stop
    lost: int
    duplicates: int
    retried: int  # sends cut off on the primary, retried with an attempt
    returned_s: float  # from the primary's restart to its first accept of new mail


def _relay(name: str, port: int) -> str:
    return f'[[relay]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'


def run_failover(workdir: Path, redis_url: str, *, emails: int) -> FailoverRun:
    """One run against the Redis at `redis_url` (its queue empty); see the module."""
    primary, backup = SmtpServer(port=free_port()), SmtpServer(port=free_port())
    primary.behaviour.data_delay = backup.behaviour.data_delay = 0.005
    relays = workdir / "relays.toml"
    relays.write_text('mode = "failover"\n' + _relay("primary", primary.port))
    relays.write_text(relays.read_text() + _relay("backup", backup.port))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "WORKER_", "REDIS"))},
        "REDIS_URL": redis_url,
        "SMTP_RELAYS_FILE": str(relays),
        "SMTP_TIMEOUT_SECONDS": "2",
        "MAIL_FROM": "sender@example.com",
        "WORKER_CONCURRENCY": str(_CONCURRENCY),
        "WORKER_RECLAIM_IDLE_SECONDS": "3",
        "WORKER_RETRY_BASE_SECONDS": "0.2",
        "WORKER_RETRY_MAX_SECONDS": "1",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    primary.start()
    backup.start()
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.worker"], env=env, cwd=workdir, stdout=log, stderr=log
    )
    restarted: SmtpServer | None = None
    try:
        tasks = [EmailTask(to=f"r{i}@example.net", subject="s", text="x") for i in range(emails)]
        ids = enqueue(redis_url, tasks)
        wait_until(lambda: len(primary.received) >= emails // 5, 60, "the primary under load")
        primary.stop()
        stopped_at = time.time()
        wait_until(lambda: bool(backup.received), 30, "the backup's first accept")
        failover_s = backup.received[0].at - stopped_at
        everyone = set(ids)
        wait_until(
            lambda: set(primary.task_ids()) | set(backup.task_ids()) >= everyone, 120, "all sent"
        )
        accepts = sorted(r.at for r in [*primary.received, *backup.received])
        gaps = [b - a for a, b in itertools.pairwise(accepts)]
        sent = Counter(primary.task_ids() + backup.task_ids())
        retried = (workdir / "worker.log").read_text().count('"event":"task_retry_scheduled"')

        restarted = SmtpServer(port=primary.port)
        restarted.start()
        back_at = time.time()
        while not restarted.received:  # a trickle of new mail until the primary takes some
            if time.time() - back_at > 60:
                raise AssertionError("the primary never took mail again")
            enqueue(redis_url, tasks[:1])
            time.sleep(0.1)
        returned_s = restarted.received[0].at - back_at
        return FailoverRun(
            emails=emails,
            failover_s=round(failover_s, 3),
            longest_gap_s=round(max(gaps), 3),
            lost=len(everyone - set(sent)),
            duplicates=sum(n - 1 for n in sent.values()),
            retried=retried,
            returned_s=round(returned_s, 3),
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
        for server in (primary, backup, restarted):
            if server is not None:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--emails", type=int, default=2000)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as directory:
            workdir = Path(directory)
            server = RedisServer(workdir / "redis", port=free_port())
            server.start()
            try:
                result = run_failover(workdir, server.url, emails=args.emails)
            finally:
                server.stop()
        print(f"run {run}: {result}", flush=True)


if __name__ == "__main__":
    main()
