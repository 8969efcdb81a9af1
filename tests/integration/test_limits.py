"""Shared send limits end to end: worker subprocesses, a real Redis, a real SMTP server that
timestamps what it accepts (and can throttle like a provider).

These run for tens of seconds in all: a rate can only be observed over time. They assert counts
per window of the server's clock, not speed.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_sync

from service import EmailTask
from service.local.redis_server import RedisServer
from tests.conftest import WorkerProcess, dead_letters, enqueue, wait_until
from tests.integration.test_admin import admin, admin_json
from tests.smtp_server import SmtpServer

StartWorker = Callable[..., WorkerProcess]


def _tasks(count: int) -> list[EmailTask]:
    return [EmailTask(to=f"user{i}@example.com", subject=f"n{i}", text="x") for i in range(count)]


def _most_in_any_window(times: list[float], seconds: float) -> int:
    """The most arrivals within any half-open window [t, t + seconds) starting at an arrival."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def _events(workers: list[WorkerProcess], event: str) -> list[dict[str, object]]:
    lines = [line for w in workers for line in w.output().splitlines()]
    return [json.loads(line) for line in lines if f'"event":"{event}"' in line]


def test_four_workers_share_a_rate_limit_exactly(
    redis_server: RedisServer, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    count, limit, burst = 1000, 50, 5  # 20 s of backlog
    ids = enqueue(redis_server.url, _tasks(count))
    settings = {"SMTP_RATE_LIMIT": f"{limit}/s", "SMTP_RATE_BURST": str(burst)}
    workers = [start_worker(**settings) for _ in range(4)]
    wait_until(lambda: len(smtp.received) >= count, timeout=60, what="every email sent")
    arrivals = sorted(r.at for r in smtp.received)
    assert sorted(smtp.task_ids()) == sorted(ids)
    rate = (count - 1) / (arrivals[-1] - arrivals[0])
    most = _most_in_any_window(arrivals, 1.0)
    stall = smtp.longest_stall(arrivals[0], arrivals[-1])
    print(
        f"rate {rate:.3f}/s over {arrivals[-1] - arrivals[0]:.2f} s; most in 1 s: {most}; "
        f"the server's longest stall: {stall * 1000:.0f} ms"
    )
    assert abs(rate - limit) / limit <= 0.02, f"{rate:.2f}/s"
    # The slots allow limit + burst in any 1 s window exactly (55: the burst, then one every
    # 20 ms). Arrivals are a send's duration after their slots: a window starting at an arrival
    # a few ms late reaches the slot 1.000 s after it, so the server can count one more. A
    # server starved of CPU (a loaded machine) timestamps the sends that queued meanwhile at
    # once: up to `limit` per second of its longest stall more.
    assert most <= limit + burst + 1 + math.ceil(limit * stall), f"stall {stall:.3f} s"
    assert all(len(_events([w], "task_sent")) > count / 10 for w in workers)  # all took part


def test_workers_converge_below_a_providers_hidden_rate_without_burning_attempts(
    redis_server: RedisServer,
    smtp: SmtpServer,
    start_worker: StartWorker,
    db: redis_sync.Redis,
    tmp_path: Path,
) -> None:
    count, limit, hidden = 300, 60, 30
    smtp.behaviour.throttle_above = hidden
    ids = enqueue(redis_server.url, _tasks(count))
    workers = [start_worker(SMTP_RATE_LIMIT=f"{limit}/s") for _ in range(2)]
    wait_until(lambda: len(smtp.received) >= count, timeout=60, what="every email sent")
    assert sorted(smtp.task_ids()) == sorted(ids)  # each once
    assert dead_letters(db) == []
    assert _events(workers, "task_retry_scheduled") == []  # no attempt used by throttling
    throttled = _events(workers, "task_throttled")
    assert len(throttled) == len(smtp.throttled) > 0
    lowered = [float(str(e["per_second"])) for e in _events(workers, "send_rate_lowered")]
    assert lowered
    assert min(lowered) < hidden
    # Converged: after the first throttling, refusals are a small share of the sends.
    first = smtp.throttled[0]
    later = [t for t in smtp.throttled if t > first + 3]
    sent_later = [r.at for r in smtp.received if r.at > first + 3]
    assert len(later) <= 0.1 * len(sent_later), (len(later), len(sent_later))
    _write_trace(tmp_path / "convergence.txt", [r.at for r in smtp.received], smtp.throttled)


def _write_trace(path: Path, accepted: list[float], refused: list[float]) -> None:
    """Per second: accepted and refused (for the report; the test prints the path)."""
    start = min(accepted + refused)
    seconds = int(max(accepted + refused) - start) + 1
    rows = [
        f"{s:3d}s accepted={sum(1 for t in accepted if s <= t - start < s + 1):3d} "
        f"refused={sum(1 for t in refused if s <= t - start < s + 1):3d}"
        for s in range(seconds)
    ]
    path.write_text("\n".join(rows) + "\n")
    print("convergence trace", path, *rows, sep="\n")


def test_the_quota_stops_sending_and_resumes_as_its_window_rolls(
    redis_server: RedisServer,
    smtp: SmtpServer,
    start_worker: StartWorker,
    db: redis_sync.Redis,
) -> None:
    count, quota, window = 25, 10, 3.0
    ids = enqueue(redis_server.url, _tasks(count))
    worker = start_worker(SMTP_DAILY_QUOTA=str(quota), SMTP_DAILY_QUOTA_WINDOW_SECONDS=str(window))
    wait_until(lambda: len(smtp.received) >= count, timeout=30, what="every email sent")
    arrivals = sorted(r.at for r in smtp.received)
    assert sorted(smtp.task_ids()) == sorted(ids)
    # The limiter counts a send when it grants it; the server sees it a send's latency later
    # (the first ones also open the connection): a few milliseconds here.
    assert _most_in_any_window(arrivals, window - 0.05) <= quota
    assert arrivals[quota] - arrivals[0] >= window - 0.05  # stopped until the window allowed
    assert arrivals[-1] - arrivals[0] < 3 * window  # and resumed each time it did
    assert _events([worker], "send_quota_reached")
    assert _events([worker], "task_retry_scheduled") == []
    assert dead_letters(db) == []


def test_a_worker_waiting_for_the_limiter_stops_at_once(
    redis_server: RedisServer, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    enqueue(redis_server.url, _tasks(3))
    worker = start_worker(SMTP_RATE_LIMIT="6/min")  # a slot every 10 s
    wait_until(lambda: len(smtp.received) == 1, timeout=10, what="the first email")
    time.sleep(0.5)  # the reader now sleeps until the next slot, ~9.5 s away
    asked = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=10) == 0
    assert time.monotonic() - asked < 3.0
    assert len(smtp.received) == 1


def test_admin_stats_show_the_limits_and_the_drain_forecast(
    redis_server: RedisServer, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.throttle_above = 1  # every send after the first in a second: slow down
    enqueue(redis_server.url, _tasks(30))
    worker = start_worker(
        SMTP_RATE_LIMIT="600/min", SMTP_DAILY_QUOTA="1000", SMTP_DAILY_QUOTA_WINDOW_SECONDS="3600"
    )
    wait_until(lambda: _events([worker], "send_rate_lowered") != [], timeout=15, what="a slow-down")
    stats = admin_json(redis_server.url, "stats")
    assert isinstance(stats, dict)
    limits = stats["limits"]
    assert (limits["rate_limit_per_s"], limits["burst"], limits["quota"]) == (10.0, 1, 1000)
    assert limits["effective_rate_per_s"] <= 7.0  # lowered at least once (x0.7)
    assert 1 <= limits["quota_used"] <= 30
    assert limits["quota_window_s"] == 3600.0
    # The stream's entries at the effective rate (the quota has room for them).
    expected = stats["stream"] / limits["effective_rate_per_s"]
    assert limits["drain_forecast_s"] == pytest.approx(expected, abs=0.2)
    text = admin(redis_server.url, "stats").stdout
    assert "effective now (/s)" in text
    assert "of 1000 per 3600 s" in text
    worker.stop()
