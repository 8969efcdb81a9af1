"""Failure handling end to end: retries, dead letters, schedules, outages, duplicates.

Each test runs `python -m service.worker` as a real subprocess against a real redis-server and
a real SMTP server that the test tells to refuse, stall or go away.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import orjson
import redis as redis_sync

from service import EmailTask
from service.keys import QueueKeys
from service.local.redis_server import RedisServer
from service.wire import encode_entry
from tests.conftest import (
    DELAYED,
    GROUP,
    STREAM,
    as_entries,
    dead_letters,
    enqueue,
    pending_count,
    wait_until,
)
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

KEYS = QueueKeys("emails")


def _task(to: str | list[str] = "a@example.com") -> EmailTask:
    return EmailTask(to=to, subject="s", text="x")


def _log_events(output: str, event: str) -> list[dict[str, object]]:
    lines = (orjson.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def test_transient_failures_are_retried_with_growing_delays_then_delivered(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.data_replies = ["451 4.3.0 try again later", "452 4.3.1 out of storage"]
    (task_id,) = enqueue(redis_server.url, [_task()])
    worker = start_worker(WORKER_RETRY_BASE_SECONDS="0.4", WORKER_RETRY_MAX_SECONDS="10")
    wait_until(lambda: smtp.task_ids() == [task_id], 15, "the delivery after two retries")
    worker.wait_for_log("task_sent")
    assert worker.stop() == 0
    retries = _log_events(worker.output(), "task_retry_scheduled")
    assert [r["attempt"] for r in retries] == [1, 2]
    assert [r["reason"] for r in retries] == [
        "SMTP 451 4.3.0 try again later",
        "SMTP 452 4.3.1 out of storage",
    ]
    # Jittered within the upper half of 0.4 s, then of 0.8 s.
    first, second = (float(str(r["retry_in_s"])) for r in retries)
    assert 0.2 <= first <= 0.4
    assert 0.4 <= second <= 0.8
    (sent,) = _log_events(worker.output(), "task_sent")
    assert sent["attempt"] == 3
    assert dead_letters(db) == []
    assert db.xlen(STREAM) == 0
    assert db.zcard(DELAYED) == 0


def test_permanent_failure_is_dead_lettered_once_without_retries(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.data_replies = ["554 5.7.1 rejected as spam"]
    (task_id,) = enqueue(redis_server.url, [_task()])
    worker = start_worker()
    wait_until(lambda: len(dead_letters(db)) == 1, 10, "the dead letter")
    time.sleep(1.0)  # a retry, if there were one, would come within 0.2 s
    assert smtp.data_started == 1
    assert smtp.received == []
    (dead,) = dead_letters(db)
    assert dead[b"id"].decode() == task_id
    assert dead[b"dead_reason"] == b"SMTP 554 5.7.1 rejected as spam"
    assert (dead[b"dead_attempts"], dead[b"dead_deliveries"]) == (b"1", b"1")
    assert int(dead[b"dead_at"]) <= time.time() * 1000
    assert db.xlen(STREAM) == 0
    assert db.zcard(DELAYED) == 0
    assert worker.stop() == 0
    (logged,) = _log_events(worker.output(), "task_dead_lettered")
    assert logged["dead_letters"] == 1  # the dead-letter stream's size is always reported


def test_transient_failures_are_dead_lettered_when_attempts_run_out(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.data_replies = ["421 4.7.0 slow down"] * 10
    enqueue(redis_server.url, [_task()])
    worker = start_worker(WORKER_MAX_ATTEMPTS="3")
    wait_until(lambda: len(dead_letters(db)) == 1, 15, "the dead letter")
    (dead,) = dead_letters(db)
    assert dead[b"dead_reason"] == b"gave up after 3 attempts; SMTP 421 4.7.0 slow down"
    assert dead[b"dead_attempts"] == b"3"
    assert smtp.data_started == 3
    assert smtp.received == []
    assert worker.stop() == 0


def test_partial_refusal_never_resends_to_accepted_recipients(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    smtp.behaviour.rcpt_replies["busy@example.com"] = ["450 4.2.1 mailbox busy"]
    everyone = ["ok@example.com", "busy@example.com", "gone@example.com"]
    (task_id,) = enqueue(redis_server.url, [_task(everyone)])
    worker = start_worker()
    wait_until(lambda: len(smtp.received) == 2, 15, "the send and the retry")
    first, retry = smtp.received
    assert first.rcpt_tos == ["ok@example.com"]
    assert retry.rcpt_tos == ["busy@example.com"]  # not ok@ again, not gone@
    # The same message both times: headers name everyone, the Message-ID is the task's.
    assert first.message["Message-ID"] == retry.message["Message-ID"]
    assert first.message["To"] == retry.message["To"]
    assert smtp.task_ids() == [task_id, task_id]
    (dead,) = dead_letters(db)
    assert orjson.loads(dead[b"rcpt"]) == ["gone@example.com"]
    assert dead[b"dead_reason"].startswith(b"refused: gone@example.com 550 5.1.1")
    worker.wait_for_log("task_sent")
    time.sleep(0.5)
    assert len(smtp.received) == 2
    assert worker.stop() == 0
    (partly,) = _log_events(worker.output(), "task_partly_sent")
    assert (partly["retry_recipients"], partly["dead_recipients"]) == (1, 1)


def test_an_address_in_to_and_cc_is_one_recipient_and_a_452_retries_only_the_refused(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # `a` is in To and in Cc; the server takes two recipients per transaction and answers 452
    # to the rest (RFC 5321 4.5.3.1.10). `a` must be in the envelope once, and only `c`, the
    # one refused, in the retry: never `a` again, though it was refused as a duplicate.
    smtp.behaviour.max_recipients = 2
    a, b, c = "a@example.com", "b@example.com", "c@example.com"
    task = EmailTask(to=[a, b, c], cc=[f"A <{a}>"], subject="s", text="x")
    (task_id,) = enqueue(redis_server.url, [task])
    worker = start_worker()
    wait_until(lambda: len(smtp.received) == 2, 15, "the send and the retry")
    worker.wait_for_log("task_sent")
    time.sleep(0.5)  # a third copy, if any, would come within 0.2 s
    assert [r.rcpt_tos for r in smtp.received] == [[a, b], [c]]
    assert smtp.task_ids() == [task_id, task_id]
    assert dead_letters(db) == []
    assert worker.stop() == 0
    (partly,) = _log_events(worker.output(), "task_partly_sent")
    assert partly["retry_recipients"] == 1
    assert partly["reason"] == f"refused: {c} 452 4.5.3 Too many recipients"


def test_scheduled_sends_are_not_delivered_early(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    worker = start_worker()
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    (at_time,) = enqueue(redis_server.url, [_task("at@example.com")], send_at=send_at)
    delayed_from = time.time()
    (delayed,) = enqueue(redis_server.url, [_task("delay@example.com")], delay=1.5)
    assert db.zcard(DELAYED) == 2
    assert db.xlen(STREAM) == 0
    wait_until(lambda: len(smtp.received) == 2, 10, "both scheduled sends")
    by_id = dict(zip(smtp.task_ids(), smtp.received, strict=True))
    assert by_id[at_time].at >= send_at.timestamp()
    assert by_id[delayed].at >= delayed_from + 1.5
    # Promotion is polled at least once a second: not early, and not much late either.
    assert by_id[at_time].at < send_at.timestamp() + 1.5
    # The Date header says when it was due, not when it was enqueued.
    dated = parsedate_to_datetime(str(by_id[at_time].message["Date"]))
    assert abs(dated.timestamp() - send_at.timestamp()) < 1
    assert worker.stop() == 0


def test_smtp_outage_pauses_the_worker_and_burns_no_attempt(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.stop()  # the SMTP server is down before the worker starts
    task_ids = enqueue(redis_server.url, [_task(f"u{n}@example.com") for n in range(20)])
    # One attempt only: any attempt the outage used up would dead-letter its task.
    worker = start_worker(WORKER_MAX_ATTEMPTS="1")
    worker.wait_for_log("smtp_unavailable")
    worker.wait_for_log("smtp_probe_failed", timeout=10)
    time.sleep(2.0)  # an outage of several seconds
    assert dead_letters(db) == []
    assert db.xlen(STREAM) + db.zcard(DELAYED) == 20  # every task is still queued
    revived = SmtpServer(port=smtp.port)
    revived.start()
    try:
        wait_until(lambda: len(revived.received) == 20, 45, "every email after the outage")
        assert sorted(revived.task_ids()) == sorted(task_ids)
    finally:
        revived.stop()
    worker.wait_for_log("smtp_available")
    assert dead_letters(db) == []
    assert worker.stop() == 0
    output = worker.output()
    # Paused: sends in flight when the server vanished were requeued, nothing else was tried.
    requeued = _log_events(output, "task_requeued")
    assert 1 <= len(requeued) <= 10  # at most WORKER_CONCURRENCY sends were in flight
    assert len(_log_events(output, "smtp_unavailable")) == 1


def test_a_bare_421_greeting_pauses_the_worker_and_burns_no_attempt(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # A server going away greets with "421" and no text (RFC 5321 allows it): the sends and the
    # breaker's probes must read that as "unusable", not crash on the missing text.
    smtp.behaviour.greeting = "421"
    (task_id,) = enqueue(redis_server.url, [_task()])
    worker = start_worker(WORKER_MAX_ATTEMPTS="1")
    worker.wait_for_log("smtp_unavailable")
    worker.wait_for_log("smtp_probe_failed", timeout=10)
    assert worker.process.poll() is None  # the probe loop lives on
    assert dead_letters(db) == []
    smtp.behaviour.greeting = None
    wait_until(lambda: smtp.task_ids() == [task_id], 30, "the email once the server greets again")
    worker.wait_for_log("smtp_available")
    assert worker.stop() == 0
    (paused,) = _log_events(worker.output(), "smtp_unavailable")
    assert str(paused["reason"]).endswith(f"127.0.0.1:{smtp.port}: SMTP 421")


def test_a_server_that_refuses_ehlo_pauses_the_worker_once_and_probes_less_and_less_often(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # It greets, then refuses EHLO and HELO: no send can reach MAIL. The probes must see that
    # too (not connect and QUIT, pass, resume, and pause again about once a second forever).
    smtp.behaviour.helo_reply = "554 5.7.1 not welcome"
    (task_id,) = enqueue(redis_server.url, [_task()])
    worker = start_worker(WORKER_MAX_ATTEMPTS="1")
    worker.wait_for_log("smtp_unavailable")
    time.sleep(4.5)  # probes after 0.5-1 s, then 1-2 s, then 2-4 s
    output = worker.output()
    assert _log_events(output, "smtp_available") == []
    assert len(_log_events(output, "smtp_unavailable")) == 1
    probes = _log_events(output, "smtp_probe_failed")
    assert [p["failures"] for p in probes] == list(range(1, len(probes) + 1))
    assert 2 <= len(probes) <= 3
    assert str(probes[0]["reason"]).endswith(": SMTP 554 5.7.1 not welcome")
    assert dead_letters(db) == []
    smtp.behaviour.helo_reply = None
    wait_until(lambda: smtp.task_ids() == [task_id], 30, "the email once EHLO is accepted")
    worker.wait_for_log("smtp_available")
    assert worker.stop() == 0
    assert len(_log_events(worker.output(), "smtp_unavailable")) == 1


def test_rejected_credentials_pause_the_worker_until_fixed(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.credentials = ("mailer", "the-right-one")
    (task_id,) = enqueue(redis_server.url, [_task()])
    worker = start_worker(
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD="a-wrong-one",  # noqa: S106 - a test server's password
        WORKER_MAX_ATTEMPTS="1",
    )
    worker.wait_for_log("smtp_probe_failed", timeout=10)
    (paused,) = _log_events(worker.output(), "smtp_unavailable")
    assert "authentication failed (SMTP 535)" in str(paused["reason"])
    assert dead_letters(db) == []
    smtp.behaviour.credentials = ("mailer", "a-wrong-one")  # the operator fixes the account
    wait_until(lambda: smtp.task_ids() == [task_id], 45, "the delivery once AUTH works")
    assert worker.stop() == 0
    assert "a-wrong-one" not in worker.output()


def test_redis_restart_under_load_loses_nothing(
    tmp_path: Path, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        task_ids = enqueue(server.url, [_task(f"u{n}@example.com") for n in range(300)])
        smtp.behaviour.data_delay = 0.01  # keep the worker busy across the restart
        worker = start_worker(REDIS_URL=server.url)
        wait_until(lambda: len(smtp.received) >= 50, 20, "the first 50 deliveries")
        server.stop()
        time.sleep(2.0)
        assert worker.process.poll() is None  # riding it out, not crashing
        server.start()  # same port, same AOF
        wait_until(lambda: len(set(smtp.task_ids())) == 300, 60, "every email")
        worker.wait_for_log("redis_available")
        client = redis_sync.Redis.from_url(server.url)
        wait_until(lambda: client.xlen(STREAM) == 0, 10, "an empty stream")
        assert int(client.xpending(STREAM, GROUP)["pending"]) == 0
        client.close()
        assert worker.stop() == 0
    finally:
        server.stop()
    delivered = smtp.task_ids()
    assert sorted(set(delivered)) == sorted(task_ids)
    # A send accepted while Redis was down is recorded when it is back, so none repeats.
    assert len(delivered) == 300


def test_worker_killed_right_after_the_smtp_accept_does_not_resend(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    (task_id,) = enqueue(redis_server.url, [_task()])
    first = start_worker(WORKER_NAME="box-1")
    wait_until(lambda: smtp.task_ids() == [task_id], 10, "the delivery")
    # Killed 0.2 s after the accept, before it could do anything else: its settle already
    # reached Redis (it is one round trip after the 250 reply).
    time.sleep(0.2)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    assert pending_count(db) == 0
    assert db.xlen(STREAM) == 0
    second = start_worker(WORKER_NAME="box-1")  # a restart resumes its own pending entries
    time.sleep(1.0)
    assert second.stop() == 0
    assert smtp.task_ids() == [task_id]


def test_a_copy_of_a_task_already_sent_is_not_sent_again(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # The state a lost settle race leaves: a stalled worker sent the task after another worker
    # had reclaimed it and scheduled a retry copy. The stalled one left a sent record.
    task_id = "0123456789abcdef0123456789abcdef"
    fields = encode_entry(_task(), task_id, int(time.time() * 1000))
    db.xadd(STREAM, {**fields, "tries": b"1"})  # type: ignore[dict-item]
    db.set(KEYS.sent(task_id), "1-0", px=60_000)
    worker = start_worker()
    worker.wait_for_log("task_already_sent")
    assert smtp.data_started == 0
    assert db.xlen(STREAM) == 0
    assert pending_count(db) == 0
    assert worker.stop() == 0


def test_entries_that_keep_killing_their_worker_are_dead_lettered(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # An entry Redis has already handed out 5 times, each time without an outcome (as if it
    # crashed its worker every time): the next delivery dead-letters it instead of sending.
    (task_id,) = enqueue(redis_server.url, [_task()])
    db.xgroup_create(STREAM, GROUP, id="0")
    reply = db.xreadgroup(GROUP, "crashed", {STREAM: ">"})
    assert isinstance(reply, list)
    ((entry_id, _),) = as_entries(reply[0][1])
    db.xclaim(STREAM, GROUP, "crashed", 0, [entry_id], retrycount=5)
    worker = start_worker(WORKER_RECLAIM_IDLE_SECONDS="2.5")
    wait_until(lambda: len(dead_letters(db)) == 1, 15, "the dead letter")
    (dead,) = dead_letters(db)
    assert dead[b"id"].decode() == task_id
    assert dead[b"dead_reason"] == b"handed out 6 times without an outcome"
    assert smtp.data_started == 0
    assert worker.stop() == 0


def test_starttls_is_required_not_opportunistic(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    # The test server offers no STARTTLS: the worker must refuse to send rather than go on in
    # clear text, keep the task, and pause as for any unusable server.
    enqueue(redis_server.url, [_task()])
    worker = start_worker(SMTP_SECURITY="starttls")
    worker.wait_for_log("smtp_unavailable")
    assert worker.stop() == 0
    assert smtp.received == []
    assert dead_letters(db) == []
    assert db.xlen(STREAM) + db.zcard(DELAYED) == 1
    assert "STARTTLS extension not supported by server" in worker.output()
