"""The latency phase's arithmetic and its watcher: Message-IDs read from smtp-sink's files, the
watcher's stamps of them, nearest-rank percentiles, and a lost email refused rather than left
out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.acceptance import acceptance_times, latencies, read_dump, task_id_in

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"X-Client-Addr: 127.0.0.1\nMessage-ID: <abc123@example.com>\n\nbody", "abc123"),
        (b"Subject: x\r\nMessage-ID: <t-1@d>\r\n", "t-1"),
        (b"Subject: no id\n\nMessage-ID in the body: <x@y>", None),
        (b"Message-ID: <first-line@d>\n", None),  # smtp-sink's own headers always come first
        (b"Subject: x\nMessage-ID: <no-at-sign>\n", None),
    ],
)
def test_task_id_in(head: bytes, expected: str | None) -> None:
    assert task_id_in(head) == expected


def test_each_file_gives_its_task_a_time_by_file_time_and_by_stamp(tmp_path: Path) -> None:
    for name, task_id, mtime_ns in [("a", "t1", 1_000_000_000), ("b", "t2", 2_500_000_000)]:
        path = tmp_path / name
        path.write_bytes(b"X-Helo-Args: h\nMessage-ID: <" + task_id.encode() + b"@d>\n\nhi\n")
        os.utime(path, ns=(mtime_ns, mtime_ns))
    (tmp_path / "c").write_bytes(b"X-Helo-Args: h\n\nno message id\n")
    dump = read_dump(tmp_path)
    assert dump == {"a": ("t1", 1.0), "b": ("t2", 2.5)}
    by_file_time, by_stamp = acceptance_times(dump, {"a": 1.25, "c": 9.0})
    assert by_file_time == {"t1": 1.0, "t2": 2.5}
    assert by_stamp == {"t1": 1.25}  # b was never stamped: left out, so latencies() refuses it


def test_the_watcher_stamps_each_closed_file_between_its_write_and_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "stamps.json"
    watched = tmp_path / "dump"
    watched.mkdir()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bench.accept_watch", str(watched), str(out)],
        stdout=subprocess.PIPE,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == b"ready"
        before = time.time()
        for name in ("m.1", "m.2"):
            (watched / name).write_bytes(b"x")
        time.sleep(0.2)
        after = time.time()
    finally:
        watcher.terminate()
        assert watcher.wait(timeout=10) == 0
        if watcher.stdout is not None:
            watcher.stdout.close()
    stamps = json.loads(out.read_text())
    assert set(stamps) == {"m.1", "m.2"}
    assert all(before <= at <= after for at in stamps.values())


@pytest.mark.parametrize(
    ("count", "p50_index", "p99_index"),
    [(1, 0, 0), (2, 0, 1), (100, 49, 98), (101, 50, 99), (200, 99, 197), (1000, 499, 989)],
)
def test_nearest_rank_percentiles(count: int, p50_index: int, p99_index: int) -> None:
    # Latency i ms for the i-th task, accepted in shuffled order: ranks do not depend on it.
    enqueued = {f"t{i}": 100.0 for i in range(count)}
    accepted = {f"t{i}": 100.0 + i / 1000 for i in reversed(range(count))}
    figures = latencies(enqueued, accepted)
    assert figures.emails == count
    assert figures.p50_ms == pytest.approx(p50_index)
    assert figures.p99_ms == pytest.approx(p99_index)
    assert figures.max_ms == pytest.approx(count - 1)


def test_an_email_that_never_arrived_is_an_error_not_a_shorter_tail() -> None:
    with pytest.raises(ValueError, match="1 of 2 emails never reached the sink"):
        latencies({"a": 1.0, "b": 1.0}, {"a": 1.01})
