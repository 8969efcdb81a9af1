"""When Postfix's C `smtp-sink` accepted each email, and the enqueue-to-accept latencies.

smtp-sink reports no time per message, and a sink of our own (aiosmtpd) is the slower server
the mix is not measured on. Started with `-d DIR/...` (see `bench.sinks`), smtp-sink writes
each message into a file of its own and closes it once the message is complete, before its 250
reply; the worker's Message-ID in it carries the task id, which pairs the file with its enqueue.
Two clocks give each acceptance a time, and the truth lies between them:

- the file's modification time, stamped by the kernel in the sink's own write: never late, but
  read from the kernel's coarse clock, which lags real time by up to a tick (4 ms at HZ=250)
  and more on a busy machine: latencies from it are lower bounds;
- the time `bench.accept_watch` (a process of its own, on inotify) learned of the file's close:
  never early, late by that process's scheduling delay: latencies from it are upper bounds.

Enqueue times are `time.time()` (the same real-time clock) just before `Producer.enqueue`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Latencies", "acceptance_times", "latencies", "read_dump", "task_id_in"]

_MESSAGE_ID: Final = b"\nMessage-ID: <"
_HEAD_BYTES: Final = 4096  # the worker writes Message-ID among the first headers


@dataclass(frozen=True, slots=True)
class Latencies:
    """Enqueue-to-accept latencies of one paced run, milliseconds."""

    emails: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def task_id_in(head: bytes) -> str | None:
    """The task id in a message's `Message-ID: <task_id@domain>` header, or None."""
    start = head.find(_MESSAGE_ID)
    if start < 0:
        return None
    start += len(_MESSAGE_ID)
    end = head.find(b"@", start)
    return head[start:end].decode("ascii", "replace") if end > start else None


def read_dump(directory: Path) -> dict[str, tuple[str, float]]:
    """File name -> (task id, modification time in seconds since the epoch) of every message
    smtp-sink wrote into `directory` (files without a Message-ID are left out)."""
    found: dict[str, tuple[str, float]] = {}
    for entry in os.scandir(directory):
        with open(entry.path, "rb") as file:
            task_id = task_id_in(file.read(_HEAD_BYTES))
        if task_id is not None:
            found[entry.name] = (task_id, entry.stat().st_mtime_ns / 1e9)
    return found


def acceptance_times(
    dump: Mapping[str, tuple[str, float]], stamps: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Task id -> acceptance time, by the files' modification times (lower bounds) and by the
    watcher's stamps (upper bounds); a file the watcher never saw is left out of the latter."""
    by_file_time = {task_id: mtime for task_id, mtime in dump.values()}
    by_stamp = {task_id: stamps[name] for name, (task_id, _) in dump.items() if name in stamps}
    return by_file_time, by_stamp


def latencies(enqueued: Mapping[str, float], accepted: Mapping[str, float]) -> Latencies:
    """p50, p99 and max of accepted - enqueued over every enqueued task.

    A task with no acceptance raises ValueError: a lost email is not a latency.
    """
    missing = enqueued.keys() - accepted.keys()
    if missing:
        raise ValueError(f"{len(missing)} of {len(enqueued)} emails never reached the sink")
    if not enqueued:
        raise ValueError("no emails")
    ordered = sorted(accepted[task_id] - at for task_id, at in enqueued.items())
    count = len(ordered)

    def rank(percent: int) -> float:
        # Nearest rank: the smallest latency that `percent` % of the emails stay at or under.
        return 1000 * ordered[-(-count * percent // 100) - 1]

    return Latencies(emails=count, p50_ms=rank(50), p99_ms=rank(99), max_ms=1000 * ordered[-1])
