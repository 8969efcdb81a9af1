"""`python -m service.worker` as real subprocesses, configured only by environment variables."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .children import Children
from .workload import MAIL_FROM

__all__ = ["CONCURRENCY", "WorkerConfig", "peak_rss_kib", "start_worker", "stop_worker"]

# Settings inherited from the caller's shell would change what is measured: drop them all.
_SETTING_PREFIXES: Final = ("REDIS_", "SMTP_", "MAIL_", "EMAIL_", "WORKER_", "LOG_")
CONCURRENCY: Final = 10  # connections per worker in most runs


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Where a worker reads from and sends to."""

    redis_url: str
    queue: str
    smtp_port: int
    concurrency: int | None = CONCURRENCY  # None: the worker's own default
    status_records: bool = True  # False: TASK_STATUS_TTL_SECONDS=0, no status records


def worker_env(config: WorkerConfig) -> dict[str, str]:
    """The worker's environment: ours minus any setting, plus the benchmark's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(
        REDIS_URL=config.redis_url,
        EMAIL_QUEUE=config.queue,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(config.smtp_port),
        SMTP_SECURITY="none",
        MAIL_FROM=MAIL_FROM,
        LOG_LEVEL="WARNING",  # per-email log lines are INFO: keep them out of the measurement
        LOG_FORMAT="json",
    )
    if config.concurrency is not None:
        env["WORKER_CONCURRENCY"] = str(config.concurrency)
    if not config.status_records:
        env["TASK_STATUS_TTL_SECONDS"] = "0"
    return env


def start_worker(
    children: Children, config: WorkerConfig, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start one worker; its output goes to `log_path`. The working directory has no `.env`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        return children.spawn(
            [sys.executable, "-m", "service.worker"],
            env=worker_env(config),
            cwd=log_path.parent,
            stdout=log,
        )


def stop_worker(children: Children, worker: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the worker drains and exits 0), SIGKILL if it takes too long; the exit code."""
    return children.stop(worker, timeout=30.0)


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a running process (peak resident set), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None
