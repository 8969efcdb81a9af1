"""`admin task ID` and `admin task cancel ID`: a task's status and its cancel, for people and
for scripts (`--json`), with bad ids refused as usage errors before Redis is asked."""

from __future__ import annotations

import uuid
from datetime import timedelta

import orjson
import redis as redis_sync

from service import EmailTask, SyncProducer
from service.keys import QueueKeys
from service.local.redis_server import RedisServer
from tests.integration.test_admin import admin, admin_json
from tests.integration.test_admin_output import HOSTILE, SHOWN, assert_inert

KEYS = QueueKeys("emails")
TASK = EmailTask(to="a@example.com", subject="Hi", text="x", tags=["welcome", "user:42"])


def test_task_status_for_people_and_scripts(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    with SyncProducer.from_url(redis_server.url) as producer:
        task_id = producer.enqueue(TASK, delay=timedelta(minutes=10))
    status = admin_json(redis_server.url, "task", task_id)
    assert isinstance(status, dict)
    assert (status["task_id"], status["state"]) == (task_id, "scheduled")
    assert status["tags"] == ["welcome", "user:42"]
    assert set(status) == {"task_id", "state", "changed_at", "due_at", "tags"}

    shown = admin(redis_server.url, "task", task_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [f"task_id: {task_id}", "state: scheduled"]
    assert f"due_at: {status['due_at']}" in lines
    assert "tags: welcome user:42" in lines


def test_task_cancel_then_cancel_again(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    with SyncProducer.from_url(redis_server.url) as producer:
        task_id = producer.enqueue(TASK)
    first = admin(redis_server.url, "task", "cancel", task_id)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"cancelled {task_id} (it was queued): it will not be sent\n"
    assert db.xlen(KEYS.stream) == 0
    again = admin_json(redis_server.url, "task", "cancel", task_id)
    assert again == {"task_id": task_id, "cancelled": False, "was": "cancelled"}
    unknown = uuid.uuid4().hex
    shown = admin(redis_server.url, "task", "cancel", unknown)
    assert shown.stdout == (
        f"not cancelled {unknown}: no such task (never seen, or its status expired)\n"
    )
    assert admin_json(redis_server.url, "task", unknown) == {
        "task_id": unknown,
        "state": "unknown",
        "tags": [],
    }


def test_stored_text_is_escaped(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    task_id = uuid.uuid4().hex
    db.hset(KEYS.status(task_id), mapping={"s": "dead", "at": "1700000000000", "r": HOSTILE})
    shown = admin(redis_server.url, "task", task_id)
    assert shown.returncode == 0, shown.stderr
    assert_inert(shown.stdout)
    assert f"reason: {SHOWN}" in shown.stdout
    assert orjson.loads(admin(redis_server.url, "task", task_id, "--json").stdout)["reason"] == (
        HOSTILE
    )


def test_bad_task_words_are_usage_errors(redis_server: RedisServer) -> None:
    for words, message in (
        (["not-an-id"], "'not-an-id' is not a task id"),
        (["cancel"], "'cancel' is not a task id"),
        (["stop", uuid.uuid4().hex], "give a task id, or 'cancel' and a task id"),
        (["cancel", "ABC"], "'ABC' is not a task id"),
    ):
        result = admin(redis_server.url, "task", *words)
        assert result.returncode == 2, (words, result.stderr)
        assert message in result.stderr, result.stderr
