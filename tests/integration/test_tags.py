"""Tags: the labels a producer puts on a task show in every log line of its attempts and stay
in its dead letter, so "all welcome emails for user 42" can be found; they are never sent."""

from __future__ import annotations

import orjson
import redis as redis_sync

from service import EmailTask
from service.local.redis_server import RedisServer
from tests.conftest import dead_letters, enqueue, wait_until
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer


def test_tags_follow_a_task_into_its_log_lines_and_dead_letter_but_not_its_email(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.rcpt_replies = {"gone@example.com": "550 5.1.1 no such user"}
    tags = ["welcome", "user:42"]
    sent, refused = enqueue(
        redis_server.url,
        [
            EmailTask(to="a@example.com", subject="Hi", text="x", tags=tags),
            EmailTask(to="gone@example.com", subject="Hi", text="x", tags=tags),
        ],
    )
    worker = start_worker()
    wait_until(lambda: len(dead_letters(db)) == 1, 15, "the dead letter")
    assert worker.stop() == 0

    lines = [orjson.loads(line) for line in worker.output().splitlines()]
    outcomes = {
        line["task_id"]: line for line in lines if line.get("outcome") in ("sent", "dead_letter")
    }
    assert outcomes[sent]["tags"] == tags
    assert outcomes[refused]["tags"] == tags
    (letter,) = dead_letters(db)
    assert orjson.loads(letter[b"task"])["tags"] == tags
    (received,) = smtp.received
    assert "welcome" not in received.content.decode()  # labels, not content
