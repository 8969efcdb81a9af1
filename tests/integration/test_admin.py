"""`python -m service.admin` on a real queue: stats, dead letters, requeue, purge, prune."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest
import redis as redis_sync

from service import EmailTask
from service.admin.tables import table
from service.keys import QueueKeys
from service.local.redis_server import RedisServer
from service.wire import dead_entry, decode_entry, encode_entry
from tests.conftest import DEAD, GROUP, STREAM, as_entries, enqueue, wait_until
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

KEYS = QueueKeys("emails")


def admin(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.admin", *args],
        capture_output=True,
        text=True,
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )


def admin_json(redis_url: str, *args: str) -> object:
    result = admin(redis_url, *args, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def add_dead_letter(db: redis_sync.Redis, n: int, *, tries: int = 3) -> tuple[str, str]:
    """A dead letter as the worker writes it; returns (dead-letter id, task id)."""
    task_id = f"{n:032x}"
    task = EmailTask(to=f"u{n}@example.com", subject=f"s{n}", text="body " * 200)
    fields = encode_entry(task, task_id, int(time.time() * 1000))
    record = dead_entry(
        {k.encode(): v for k, v in fields.items()},
        reason=f"SMTP 550 5.1.1 user {n} unknown",
        entry_id=f"{n}-0",
        deliveries=1,
        tries=tries,
        consumer="gone-worker",
    )
    record[b"tries"] = str(tries).encode()
    dead_id = db.xadd(DEAD, record)  # type: ignore[arg-type]
    assert isinstance(dead_id, bytes)
    return dead_id.decode(), task_id


def test_stats_on_an_empty_queue(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    stats = admin_json(redis_server.url, "stats")
    assert stats == {
        "queue": "emails",
        "stream": 0,
        "pending": 0,
        "lag": 0,
        "oldest_age_s": None,
        "delayed": 0,
        "next_due_in_s": None,
        "dead": 0,
        "consumers": [],
        "limits": None,
        "relays": [],
        "relay_limits": [],
        "domain_limits": [],
        "set_aside": 0,
        "lanes": {"high": 0, "normal": 0, "low": 0},
    }


def test_stats_count_every_place_and_consumer(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    enqueue(
        redis_server.url, [EmailTask(to=f"u{n}@x.example", subject="s", text="x") for n in range(5)]
    )
    enqueue(redis_server.url, [EmailTask(to="later@x.example", subject="s", text="x")], delay=90)
    add_dead_letter(db, 1)
    db.xgroup_create(STREAM, GROUP, id="0")
    db.xreadgroup(GROUP, "worker-a", {STREAM: ">"}, count=2)
    stats = admin_json(redis_server.url, "stats")
    assert isinstance(stats, dict)
    assert (stats["stream"], stats["pending"], stats["lag"]) == (5, 2, 3)
    assert (stats["delayed"], stats["dead"]) == (1, 1)
    assert 80 < stats["next_due_in_s"] <= 90
    assert 0 <= stats["oldest_age_s"] < 30
    ((consumer),) = stats["consumers"]
    assert (consumer["name"], consumer["pending"]) == ("worker-a", 2)
    text = admin(redis_server.url, "stats").stdout
    assert "dead letters" in text
    assert "worker-a" in text


def test_dead_list_show_requeue_and_purge(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    letters = [add_dead_letter(db, n) for n in range(1, 5)]
    listed = admin_json(redis_server.url, "dead", "list", "--limit", "3")
    assert isinstance(listed, list)
    assert [item["dead_id"] for item in listed] == [dead_id for dead_id, _ in letters[:3]]
    assert listed[0]["recipients"] == ["u1@example.com"]
    assert listed[0]["reason"] == "SMTP 550 5.1.1 user 1 unknown"
    assert listed[0]["attempts"] == "3"
    human = admin(redis_server.url, "dead", "list").stdout
    assert "SMTP 550 5.1.1 user 4 unknown" in human

    (dead_id, task_id) = letters[0]
    shown = admin(redis_server.url, "dead", "show", dead_id)
    assert shown.returncode == 0
    assert f"id: {task_id}" in shown.stdout
    assert "(1,000 characters)" in shown.stdout  # a long body is cut for people...
    full = admin_json(redis_server.url, "dead", "show", dead_id)
    assert isinstance(full, dict)
    assert len(orjson.loads(full["task"])["text"]) == 1000  # ...and whole for scripts

    # Requeue one: back on the stream, fresh attempt budget, no dead_* fields, no sent record.
    db.set(KEYS.sent(task_id), "x")
    requeued = admin_json(redis_server.url, "dead", "requeue", dead_id)
    assert isinstance(requeued, dict)
    assert requeued["requeued"] == 1
    ((_, fields),) = as_entries(db.xrange(STREAM))
    envelope = decode_entry(fields)
    assert (envelope.task_id, envelope.tries, envelope.requeues) == (task_id, 0, 1)
    assert not [name for name in fields if name.startswith(b"dead_")]
    assert db.exists(KEYS.sent(task_id)) == 0
    assert db.xlen(DEAD) == 3

    missing = admin(redis_server.url, "dead", "requeue", dead_id)
    assert (missing.returncode, missing.stderr) == (
        2,
        f"error: no dead letter {dead_id} (the others were requeued)\n",
    )
    assert admin(redis_server.url, "dead", "purge", "--all").returncode == 2  # needs --yes
    assert db.xlen(DEAD) == 3
    assert admin_json(redis_server.url, "dead", "purge", letters[1][0]) == {"purged": 1}
    assert admin_json(redis_server.url, "dead", "requeue", "--all") == {
        "requeued": 2,
        "present_at_start": 2,
    }
    assert (db.xlen(DEAD), db.xlen(STREAM)) == (0, 3)
    add_dead_letter(db, 9)
    assert admin_json(redis_server.url, "dead", "purge", "--all", "--yes") == {
        "purged": 1,
        "present_at_start": 1,
    }
    assert admin(redis_server.url, "dead", "list").stdout == "no dead letters\n"


def test_requeued_dead_letter_is_delivered_by_a_worker(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    dead_id, task_id = add_dead_letter(db, 7, tries=25)
    assert admin_json(redis_server.url, "dead", "requeue", dead_id) == {
        "requeued": 1,
        "entries": {dead_id: as_entries(db.xrange(STREAM))[0][0].decode()},
    }
    worker = start_worker()
    # Its attempts were all spent; the requeue gave it a fresh budget.
    wait_until(lambda: smtp.task_ids() == [task_id], 10, "the requeued task")
    assert worker.stop() == 0


def test_prune_removes_idle_consumers_that_own_nothing(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    enqueue(redis_server.url, [EmailTask(to="a@example.com", subject="s", text="x")])
    db.xgroup_create(STREAM, GROUP, id="0")
    db.xreadgroup(GROUP, "holds-one", {STREAM: ">"}, count=1)
    db.xgroup_createconsumer(STREAM, GROUP, "gone-1")
    db.xgroup_createconsumer(STREAM, GROUP, "gone-2")
    assert admin_json(redis_server.url, "consumers", "prune", "--idle-seconds", "3600") == {
        "removed": []
    }
    time.sleep(0.1)
    pruned = admin_json(redis_server.url, "consumers", "prune", "--idle-seconds", "0.05")
    assert pruned == {"removed": ["gone-1", "gone-2"]}
    consumers = db.xinfo_consumers(STREAM, GROUP)
    assert [c["name"] for c in consumers] == [b"holds-one"]  # it still owns an entry


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("dead", "show", "1-1"), "error: no dead letter '1-1'\n"),
        (("dead", "requeue"), "error: give dead-letter ids or --all (not both)\n"),
        (("dead", "purge", "1-1", "--all"), "error: give dead-letter ids or --all (not both)\n"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    redis_server: RedisServer, db: redis_sync.Redis, args: tuple[str, ...], error: str
) -> None:
    result = admin(redis_server.url, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(error)


def test_unreachable_redis_exits_1() -> None:
    result = admin("redis://127.0.0.1:1/0", "stats")
    assert result.returncode == 1
    assert result.stderr.startswith("error: Redis failed: ConnectionError")


@pytest.mark.parametrize(
    ("headers", "rows", "expected"),
    [
        (["a", "n"], [], "a  n\n-  -\n"),
        (
            ["name", "n"],
            [["x", 5], ["long", 1234]],
            "name      n\n----  -----\nx         5\nlong  1,234\n",
        ),
        (["v"], [[None], [1.5]], "  v\n---\n  -\n1.5\n"),
    ],
)
def test_table(headers: list[str], rows: list[list[object]], expected: str) -> None:
    assert table(headers, rows) == expected
