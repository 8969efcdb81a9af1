"""Priority lanes end to end: worker subprocesses, a real Redis, a real SMTP server that
timestamps what it accepts. The figures a run measured are printed (`pytest -s`)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import redis as redis_sync

from service import EmailTask
from service.keys import CONSUMER_GROUP, Lane, QueueKeys
from service.local.redis_server import RedisServer, free_port
from tests.conftest import WorkerProcess, dead_letters, enqueue, wait_until
from tests.integration.test_operate import scrape
from tests.smtp_server import Received, SmtpServer

StartWorker = Callable[..., WorkerProcess]
KEYS = QueueKeys("emails")


def _tasks(count: int, priority: Lane, prefix: str) -> list[EmailTask]:
    return [
        EmailTask(to=f"u{i}@example.com", subject=f"{prefix}{i}", text="x", priority=priority)
        for i in range(count)
    ]


def _subjects(received: list[Received], prefix: str) -> list[str]:
    return [
        str(r.message["Subject"]) for r in received if str(r.message["Subject"]).startswith(prefix)
    ]


def _pending(db: redis_sync.Redis, lane: Lane) -> int:
    return int(db.xpending(KEYS.lane(lane), CONSUMER_GROUP)["pending"])


def test_a_high_email_overtakes_a_low_backlog_and_low_keeps_its_share(
    redis_server: RedisServer, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    limit = 50
    for batch in range(10):
        enqueue(redis_server.url, _tasks(500, "low", f"low{batch}-"))
    start_worker(SMTP_RATE_LIMIT=f"{limit}/s", SMTP_RATE_BURST="5")
    wait_until(lambda: len(smtp.received) >= 2 * limit, timeout=30, what="two seconds of low mail")

    enqueued_at = time.time()
    enqueue(redis_server.url, _tasks(1, "high", "urgent"))
    wait_until(lambda: bool(_subjects(smtp.received, "urgent")), timeout=10, what="the high email")
    (urgent,) = [r for r in smtp.received if str(r.message["Subject"]) == "urgent0"]
    latency = urgent.at - enqueued_at
    print(f"high email sent {latency:.3f} s after its enqueue, behind 5,000 low at {limit}/s")
    assert latency < 3

    # A high backlog of 8 s at the limit: low still gets its share of the reads meanwhile.
    high_count = 8 * limit
    enqueue(redis_server.url, _tasks(high_count, "high", "high"))
    wait_until(
        lambda: len(_subjects(smtp.received, "high")) >= high_count,
        timeout=60,
        what="the high backlog sent",
    )
    high_times = sorted(r.at for r in smtp.received if str(r.message["Subject"]).startswith("high"))
    first, last = high_times[0], high_times[-1]
    low_meanwhile = [
        r
        for r in smtp.received
        if str(r.message["Subject"]).startswith("low") and first <= r.at <= last
    ]
    share = len(low_meanwhile) / (len(low_meanwhile) + high_count)
    high_order = _subjects(smtp.received, "high")
    print(
        f"while {high_count} high drained over {last - first:.2f} s: {len(low_meanwhile)} low "
        f"sent, a share of {share:.3f}"
    )
    assert 0.05 <= share <= 0.3
    # Order within a lane: one worker, so the server sees each lane in enqueue order (sends
    # run in parallel, so allow neighbours to swap places by a few).
    positions = [int(subject.removeprefix("high")) for subject in high_order]
    assert all(abs(p - i) <= 10 for i, p in enumerate(positions))


def test_a_killed_worker_high_entry_is_reclaimed_in_its_lane(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.data_delay = 30  # the first worker never gets its reply
    first = start_worker(WORKER_NAME="doomed")
    (task_id,) = enqueue(redis_server.url, _tasks(1, "high", "reset"))
    wait_until(lambda: smtp.data_started >= 1, timeout=10, what="the first attempt")
    assert _pending(db, "high") == 1
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    smtp.behaviour.data_delay = 0
    second = start_worker(WORKER_NAME="rescuer")
    wait_until(lambda: task_id in smtp.task_ids(), timeout=20, what="the reclaimed send")
    second.wait_for_log("entry_reclaimed")
    wait_until(lambda: _pending(db, "high") == 0, timeout=5, what="the entry settled")
    assert db.xlen(KEYS.lane("high")) == 0
    assert dead_letters(db) == []
    assert second.stop() == 0


def test_a_retry_and_a_dead_letter_keep_the_lane(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.rcpt_replies = {
        "u0@example.com": ["451 4.3.0 try again later"],
        "u1@example.com": "550 5.1.1 no such user",
    }
    worker = start_worker()
    retried, dead = enqueue(redis_server.url, _tasks(2, "low", "low"))
    wait_until(lambda: retried in smtp.task_ids(), timeout=20, what="the retried send")
    wait_until(lambda: len(dead_letters(db)) == 1, timeout=10, what="the dead letter")
    (record,) = dead_letters(db)
    assert (record[b"id"].decode(), record[b"lane"]) == (dead, b"low")
    assert '"event":"task_retry_scheduled"' in worker.output()
    assert db.xlen(KEYS.lane("normal")) == 0  # neither went through the normal lane
    assert worker.stop() == 0


def test_a_queue_from_before_lanes_is_served_as_before(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # What an earlier release left: entries in the stream and the group on it alone.
    db.xgroup_create(KEYS.stream, CONSUMER_GROUP, id="0", mkstream=True)
    ids = enqueue(redis_server.url, _tasks(20, "normal", "old"))
    worker = start_worker()
    wait_until(lambda: len(smtp.received) >= 20, timeout=20, what="every email sent")
    assert sorted(smtp.task_ids()) == sorted(ids)
    assert db.exists(KEYS.lane("high"), KEYS.lane("low")) == 2  # their groups were created
    assert worker.stop() == 0


def test_the_metrics_show_each_lane_backlog(
    redis_server: RedisServer, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    enqueue(redis_server.url, [*_tasks(6, "low", "low"), *_tasks(2, "high", "high")])
    port = free_port()
    # One email a minute: the backlog stays put while the gauges are read.
    start_worker(SMTP_RATE_LIMIT="1/min", WORKER_HEARTBEAT_SECONDS="0.2", METRICS_PORT=str(port))

    def lanes() -> dict[str, float]:
        metrics = scrape(port)
        return {
            lane: metrics.get(f'email_queue_lane_backlog{{lane="{lane}",queue="emails"}}', -1.0)
            for lane in ("high", "normal", "low")
        }

    wait_until(lambda: lanes()["low"] == 6.0, 10, "the lane gauges")
    # The first email (a high one) may have been sent by now: a sent entry leaves its lane.
    assert lanes()["high"] in (1.0, 2.0)
    assert lanes()["normal"] == 0.0
    assert scrape(port)['email_queue_backlog{queue="emails"}'] == sum(lanes().values())
