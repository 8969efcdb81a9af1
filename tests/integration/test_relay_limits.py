"""Each relay's own limits end to end: worker subprocesses, a real Redis, two real SMTP servers
(one per relay) that timestamp what they accept.

A rate can only be observed over time: these assert counts per window of the servers' clock
and shares of the mail, not speed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from service.local.redis_server import RedisServer, free_port
from tests.conftest import WorkerProcess, dead_letters, enqueue, pending_count, wait_until
from tests.integration.test_admin import admin, admin_json
from tests.integration.test_limits import _most_in_any_window
from tests.integration.test_operate import scrape
from tests.integration.test_relays import _events, _relay, _relays_file, _start, _tasks
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

# The tests' usual reclaim delay (3 s) leaves a send 0.5 s to wait for its relay's slot, on a
# machine whose load can stall a process for longer: a wait of up to 2 s keeps these about the
# limits, not about reclaims (tested elsewhere).
_TIMINGS = {"WORKER_RECLAIM_IDLE_SECONDS": "6"}


@pytest.fixture
def second() -> Iterator[SmtpServer]:
    """The second relay's SMTP server."""
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


def _rate(server: SmtpServer) -> float:
    arrivals = sorted(r.at for r in server.received)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def _stall(server: SmtpServer) -> float:
    arrivals = [r.at for r in server.received]
    return server.longest_stall(min(arrivals), max(arrivals))


def _per_second(server: SmtpServer) -> list[int]:
    arrivals = sorted(r.at for r in server.received)
    seconds = Counter(int(at - arrivals[0]) for at in arrivals)
    return [seconds[s] for s in range(max(seconds) + 1)]


def _sent_events(workers: list[WorkerProcess]) -> list[dict[str, object]]:
    return [event for w in workers for event in _events(w.output(), "task_sent")]


def test_two_relays_each_hold_their_own_limit_across_workers(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    second: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    # Weighted 2:1 with limits 2:1: both relays stay busy for the same ~10 s.
    fast, slow, burst = 40, 20, 4
    relays = _relays_file(
        tmp_path,
        "weighted",
        _relay("fast", smtp, weight=2, rate_limit=f"{fast}/s", rate_burst=burst),
        _relay("slow", second, weight=1, rate_limit=f"{slow}/s", rate_burst=burst),
    )
    ids = enqueue(redis_server.url, _tasks(600))
    workers = [_start(start_worker, worker_env, relays, **_TIMINGS) for _ in range(3)]
    everything = set(ids)
    wait_until(
        lambda: set(smtp.task_ids()) | set(second.task_ids()) >= everything, 60, "every email"
    )
    wait_until(lambda: pending_count(db) == 0, 10, "every entry settled")
    sent = Counter(smtp.task_ids() + second.task_ids())
    assert set(sent) == everything
    reclaimed = [e for w in workers for e in _events(w.output(), "entry_reclaimed")]
    assert max(sent.values()) == 1, reclaimed  # each once
    assert dead_letters(db) == []
    figures = []
    for server in (smtp, second):  # for the report: accepted per second
        print(f"\nrelay on port {server.port}, per second:", _per_second(server))
    for server, limit in ((smtp, fast), (second, slow)):
        rate = _rate(server)
        most = _most_in_any_window([r.at for r in server.received], 1.0)
        stall = _stall(server)
        figures.append(
            f"{limit}/s: {len(server.received)} sent at {rate:.2f}/s, most in 1 s {most}, "
            f"server's longest stall {stall * 1000:.0f} ms"
        )
        assert abs(rate - limit) / limit <= 0.05, figures[-1]
        # The slots allow limit + burst in any 1 s window; a window counted from an arrival a
        # few ms late may reach one more slot, and a starved server timestamps at once what
        # queued during its stall (see test_limits).
        assert most <= limit + burst + 1 + math.ceil(limit * stall), figures[-1]
    print("\n" + "; ".join(figures))
    # Waiting for a relay uses no attempt: every email went out on its first.
    assert {event["attempt"] for event in _sent_events(workers)} == {1}
    assert all(_sent_events([w]) for w in workers)  # all took part
    # admin stats shows each relay's own limits, as the workers applied them.
    stats = admin_json(redis_server.url, "stats")
    assert isinstance(stats, dict)
    rows = {row["name"]: row for row in stats["relay_limits"]}
    assert (rows["fast"]["rate_limit_per_s"], rows["slow"]["rate_limit_per_s"]) == (fast, slow)
    assert rows["slow"]["effective_rate_per_s"] == slow


def test_a_relay_at_its_limit_makes_sends_wait_without_overflow(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    second: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    count, limit = 40, 10
    relays = _relays_file(
        tmp_path,
        "failover",
        _relay("primary", smtp, rate_limit=f"{limit}/s"),
        _relay("backup", second),
    )
    ids = enqueue(redis_server.url, _tasks(count))
    workers = [_start(start_worker, worker_env, relays, **_TIMINGS) for _ in range(2)]
    wait_until(lambda: len(smtp.received) >= count, 30, "every email sent")
    wait_until(lambda: pending_count(db) == 0, 10, "every entry settled")
    assert sorted(smtp.task_ids()) == sorted(ids)
    assert second.received == []  # at its limit the primary is not down: nothing overflowed
    assert dead_letters(db) == []
    assert {event["attempt"] for event in _sent_events(workers)} == {1}  # no attempt used
    held = sum(len(_events(w.output(), "task_held")) for w in workers)
    print(f"\n{count} sent at {_rate(smtp):.2f}/s; put back until their slot: {held}")
    # Intake follows the relay's answers: few entries are read before their slot is near.
    assert held <= count / 2
    assert _rate(smtp) <= limit * 1.05
    most = _most_in_any_window([r.at for r in smtp.received], 1.0)
    assert most <= limit + 1 + 1 + math.ceil(limit * _stall(smtp))


def test_with_overflow_the_next_relay_takes_the_excess(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    second: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    count, limit, burst = 300, 20, 2
    relays = _relays_file(
        tmp_path,
        "failover",
        _relay("primary", smtp, rate_limit=f"{limit}/s", rate_burst=burst, overflow=True),
        _relay("backup", second),
    )
    ids = enqueue(redis_server.url, _tasks(count))
    workers = [_start(start_worker, worker_env, relays, **_TIMINGS) for _ in range(2)]
    wait_until(lambda: len(smtp.received) + len(second.received) >= count, 30, "every email sent")
    wait_until(lambda: pending_count(db) == 0, 10, "every entry settled")
    assert sorted(smtp.task_ids() + second.task_ids()) == sorted(ids)  # each once
    assert dead_letters(db) == []
    primary = [r.at for r in smtp.received]
    span = max(primary + [r.at for r in second.received]) - min(primary)
    backup = len(second.received)
    print(f"\nprimary {len(primary)} (limit {limit}/s over {span:.2f} s), backup {backup}")
    assert len(second.received) > count / 2  # the backup took the excess...
    most = _most_in_any_window(primary, 1.0)  # ...the primary its limit
    stall = _stall(smtp)
    print(f"most in 1 s: {most}; server's longest stall {stall * 1000:.0f} ms")
    assert most <= limit + burst + 1 + math.ceil(limit * stall)
    assert {event["attempt"] for event in _sent_events(workers)} == {1}


def test_a_slow_down_from_one_relay_lowers_its_rate_only(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    second: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    smtp.behaviour.throttle_above = 15  # the first relay's provider allows less than set
    relays = _relays_file(
        tmp_path,
        "weighted",
        _relay("strict", smtp, rate_limit="40/s"),
        _relay("easy", second, rate_limit="40/s"),
    )
    ids = enqueue(redis_server.url, _tasks(300))
    metrics_port = free_port()
    worker = _start(start_worker, worker_env, relays, **_TIMINGS, METRICS_PORT=str(metrics_port))
    wait_until(lambda: set(smtp.task_ids()) | set(second.task_ids()) >= set(ids), 60, "every email")
    assert dead_letters(db) == []
    lowered = _events(worker.output(), "relay_rate_lowered")
    assert lowered
    assert {event["relay"] for event in lowered} == {"strict"}
    assert _events(worker.output(), "send_rate_lowered") == []  # no queue-wide rate to lower
    assert _events(worker.output(), "task_retry_scheduled") == []  # no attempt used
    stats = admin_json(redis_server.url, "stats")
    assert isinstance(stats, dict)
    rows = {row["name"]: row for row in stats["relay_limits"]}
    assert rows["strict"]["effective_rate_per_s"] < 40
    assert rows["easy"]["effective_rate_per_s"] == 40
    samples = scrape(metrics_port)
    rate = 'email_worker_relay_send_rate_per_second{kind="%s",queue="emails",relay="%s"}'
    assert samples[rate % ("limit", "strict")] == samples[rate % ("limit", "easy")] == 40
    assert samples[rate % ("effective", "strict")] < 40
    assert samples[rate % ("effective", "easy")] == 40
    text = admin(redis_server.url, "stats").stdout
    assert "relay limits  rate limit (/s)  burst  effective now (/s)" in text
    assert any(line.startswith("easy ") and " 40.0 " in line for line in text.splitlines())
