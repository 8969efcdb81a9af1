"""The state file of a running `make run`: what it started, for the tools run beside it.

`make run` writes `var/local/stack.json` (pid, Redis URL, SMTP sink, mail directory) and removes
it on exit; with no `REDIS_URL` configured, the settings of every CLI started from the same
directory take their Redis from it. Whether the stack still runs is not judged by its pid (pids
are reused, after a reboot say) but by a lock on `var/local/stack.lock` that it holds while it
runs: the kernel drops the lock when the process ends, even by SIGKILL.

Standard library only: the producer reads this, and must not need the local stack's extras.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

if sys.platform != "win32":
    import fcntl

__all__ = ["STACK_FILE", "LocalStack", "StackFile", "running_stack"]

STACK_FILE = Path("var/local/stack.json")  # relative: like `.env`, read from the working directory

# A reader holds the lock for an instant to test it; `claim` retries for that long.
_CLAIM_ATTEMPTS, _CLAIM_PAUSE_SECONDS = 20, 0.05


@dataclass(frozen=True)
class LocalStack:
    """What one `make run` runs. Fields other than `pid` are None while it starts, and the SMTP
    ones stay None when `SMTP_HOST` is configured (no sink then)."""

    pid: int
    redis_url: str | None = None
    smtp: str | None = None  # host:port of the SMTP sink
    mail_dir: str | None = None  # where the sink stores each message as an .eml file


def running_stack(path: Path = STACK_FILE) -> LocalStack | None:
    """The stack that `path` describes, while the process that wrote it runs; else None."""
    if sys.platform == "win32":  # `make run` needs POSIX process groups: never runs there
        return None
    try:
        state = json.loads(path.read_text())
        with _lock_path(path).open("rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return LocalStack(**state)  # held: its writer runs
            return None  # a stale file, left by a stack that was killed
    except (OSError, ValueError, TypeError):  # no file, or one this version cannot read
        return None


class StackFile:
    """`make run`'s hold on the state file: claimed at start, published once ready, released
    (removed) at exit."""

    def __init__(self, path: Path = STACK_FILE) -> None:
        self.path = path
        self._lock: IO[bytes] | None = None

    def claim(self) -> bool:
        """Take the file for this process and publish its pid; False, taking nothing, when
        another live stack holds it (`running_stack` says which)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_path(self.path).open("ab")  # never removed, so every process locks one inode
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(_CLAIM_PAUSE_SECONDS)
        else:
            lock.close()
            return False
        self._lock = lock
        self.publish(LocalStack(pid=os.getpid()))
        return True

    def publish(self, stack: LocalStack) -> None:
        """Replace the file's content at once (readers never see half of it); owner-only, since
        a configured `REDIS_URL` may carry a password."""
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(asdict(stack), file)
        temporary.replace(self.path)

    def release(self) -> None:
        """Remove the file and drop the lock (in that order: no reader sees a stale file live)."""
        if self._lock is not None:
            self.path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


def _lock_path(path: Path) -> Path:
    return path.with_suffix(".lock")
