"""What the admin CLI prints for people holds no terminal control: stored text (SMTP replies,
task fields, consumer and host names) is shown with its control characters escaped. `--json`
stays the exact values."""

from __future__ import annotations

import time
import unicodedata

import orjson
import redis as redis_sync

from service.keys import QueueKeys
from service.local.redis_server import RedisServer
from tests.conftest import DEAD, GROUP, STREAM
from tests.integration.test_admin import admin, admin_json

KEYS = QueueKeys("emails")
# A window title change (OSC), clear screen (CSI), NUL, a line break, DEL, an 8-bit CSI, a Unicode
# line separator and a right-to-left override.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x00\r\nX\x7f\x9b\u2028\u202e"
SHOWN = "\\x1b]0;owned\\x07\\x1b[2J\\x00\\r\\nX\\x7f\\x9b\\u2028\\u202e"


def assert_inert(output: str) -> None:
    """No character a terminal acts on, except the line ends the output is made of."""
    active = [
        c
        for c in output
        if c != "\n" and (unicodedata.category(c) in ("Cc", "Zl", "Zp") or c == "\u202e")
    ]
    assert active == [], output


def test_dead_list_and_show_escape_stored_text(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    task = orjson.dumps({"to": [f"a{HOSTILE}@example.com"], "subject": HOSTILE, "text": HOSTILE})
    dead_id = db.xadd(
        DEAD,
        {
            "v": "1",
            "id": f"task{HOSTILE}",
            "task": task,
            f"x-{HOSTILE}": HOSTILE,
            "dead_reason": f"SMTP 550 {HOSTILE}",
            "dead_at": str(int(time.time() * 1000)),
            "dead_attempts": "1",
            "dead_consumer": f"w{HOSTILE}",
        },
    )
    assert isinstance(dead_id, bytes)

    listed = admin(redis_server.url, "dead", "list")
    assert listed.returncode == 0, listed.stderr
    assert_inert(listed.stdout)
    assert f"SMTP 550 {SHOWN}"[:40] in listed.stdout

    shown = admin(redis_server.url, "dead", "show", dead_id.decode())
    assert shown.returncode == 0, shown.stderr
    assert_inert(shown.stdout)
    assert f"dead_reason: SMTP 550 {SHOWN}\n" in shown.stdout
    assert f"x-{SHOWN}: {SHOWN}\n" in shown.stdout
    assert f"dead_consumer: w{SHOWN}\n" in shown.stdout

    summaries = admin_json(redis_server.url, "dead", "list")
    assert isinstance(summaries, list)
    (letter,) = summaries
    assert letter["reason"] == f"SMTP 550 {HOSTILE}"
    assert letter["task_id"] == f"task{HOSTILE}"
    record = admin_json(redis_server.url, "dead", "show", dead_id.decode())
    assert isinstance(record, dict)
    assert record[f"x-{HOSTILE}"] == HOSTILE
    assert orjson.loads(record["task"])["subject"] == HOSTILE


def test_dead_show_escapes_a_task_that_is_not_json(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    dead_id = db.xadd(DEAD, {"v": "1", "task": f"not json {HOSTILE}"})
    assert isinstance(dead_id, bytes)
    shown = admin(redis_server.url, "dead", "show", dead_id.decode())
    assert shown.returncode == 0, shown.stderr
    assert_inert(shown.stdout)
    assert f"task: not json {SHOWN}\n" in shown.stdout


def test_stats_health_and_prune_escape_names(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    consumer = f"gone{HOSTILE}"
    db.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    db.xgroup_createconsumer(STREAM, GROUP, consumer)
    beat = {
        "consumer": consumer,
        "host": f"host{HOSTILE}",
        "pid": 7,
        "state": f"sending{HOSTILE}",
        "state_since": time.time(),
        "started_at": time.time(),
        "beat_at": time.time(),
        "interval_s": 10,
        "outcomes": {},
    }
    db.hset(KEYS.workers, consumer, orjson.dumps(beat))

    stats = admin(redis_server.url, "stats")
    assert stats.returncode == 0, stats.stderr
    assert_inert(stats.stdout)
    assert f"gone{SHOWN}" in stats.stdout

    health = admin(redis_server.url, "health")
    assert health.returncode == 0, health.stderr
    assert_inert(health.stdout)
    assert f"host{SHOWN}:7" in health.stdout

    time.sleep(0.1)
    pruned = admin(redis_server.url, "consumers", "prune", "--idle-seconds", "0.05")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == f"removed gone{SHOWN}\n"
