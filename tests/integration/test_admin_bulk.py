"""`dead requeue --all` and `dead purge --all` under a live worker: each acts on the dead letters
present when it started, each at most once, and ends, with a count and progress."""

from __future__ import annotations

import orjson
import redis as redis_sync

from service import EmailTask
from service.local.redis_server import RedisServer
from tests.conftest import DEAD, STREAM, dead_letters, enqueue, wait_until
from tests.integration.test_admin import add_dead_letter, admin
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

REFUSED = "550 5.1.1 no such user"


def test_requeue_all_under_a_live_worker_requeues_each_letter_present_once(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # Every requeued copy is refused again and dead-lettered anew, behind the requeue.
    letters = [add_dead_letter(db, n) for n in range(300)]
    smtp.behaviour.rcpt_replies.update({f"u{n}@example.com": REFUSED for n in range(300)})
    worker = start_worker()

    result = admin(redis_server.url, "dead", "requeue", "--all", "--json")

    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"requeued": 300, "present_at_start": 300}
    assert "requeue: 300 dead letters present at the start" in result.stderr
    assert result.stderr.endswith("requeue: 300 of 300\n")
    wait_until(lambda: db.xlen(DEAD) == 300 and db.xlen(STREAM) == 0, 20, "every copy dead again")
    records = dead_letters(db)
    assert sorted(record[b"id"].decode() for record in records) == sorted(t for _, t in letters)
    assert {record[b"rq"] for record in records} == {b"1"}  # each requeued exactly once
    assert worker.stop() == 0


def test_purge_all_under_a_live_worker_purges_the_letters_present_at_the_start(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    for n in range(300):
        add_dead_letter(db, n)
    # A worker dead-letters 1,000 more tasks, one at a time, while the purge runs.
    smtp.behaviour.rcpt_replies.update({f"v{n}@example.com": REFUSED for n in range(1000)})
    enqueue(
        redis_server.url,
        [EmailTask(to=f"v{n}@example.com", subject="s", text="x") for n in range(1000)],
    )
    worker = start_worker(WORKER_CONCURRENCY="1")
    wait_until(lambda: db.xlen(DEAD) > 310, 10, "the worker dead-lettering")

    result = admin(redis_server.url, "dead", "purge", "--all", "--yes")

    assert result.returncode == 0, result.stderr
    purged, of = _count(result.stdout, "purged")
    assert purged == of >= 310
    assert f"purge: {of:,} of {of:,}\n" in result.stderr
    wait_until(lambda: db.xlen(STREAM) == 0, 30, "every task dead-lettered")
    wait_until(lambda: db.xlen(DEAD) == 1300 - purged, 5, "the letters added after the start")
    assert 0 < db.xlen(DEAD) < 1000  # the worker was dead-lettering while the purge ran
    assert worker.stop() == 0


def _count(stdout: str, verb: str) -> tuple[int, int]:
    """Read `<verb>: N (of M present at the start)`."""
    head, _, tail = stdout.partition(" (of ")
    assert head.startswith(f"{verb}: ")
    assert tail.endswith(" present at the start)\n")
    return int(head.removeprefix(f"{verb}: ").replace(",", "")), int(
        tail.split(" ")[0].replace(",", "")
    )
