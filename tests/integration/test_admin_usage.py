"""Bad admin arguments are usage errors: exit 2, one message naming the argument, before Redis is
asked anything; never "Redis failed" or a traceback."""

from __future__ import annotations

import orjson
import pytest
import redis as redis_sync

from service.local.redis_server import RedisServer
from tests.conftest import DEAD, STREAM, as_entries
from tests.integration.test_admin import add_dead_letter, admin, admin_json

NOT_AN_ID = [
    "zzz",
    "1",
    "1-",
    "-1",
    "1-x",
    "1--2",
    "18446744073709551616-0",
    "1-0 ",
    "\u0661-\u0660",
]  # Arabic-Indic digits


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        *((("dead", "show", bad), "ID") for bad in NOT_AN_ID),
        *((("dead", "requeue", "1-0", bad), "ID") for bad in NOT_AN_ID),
        *((("dead", "purge", bad), "ID") for bad in NOT_AN_ID),
        (("dead", "list", "--after", "zzz"), "--after"),
        (("dead", "list", "--after", "1-x"), "--after"),
        (("dead", "list", "--after", "99999999999999999999"), "--after"),
        (("dead", "list", "--limit", "0"), "--limit"),
        (("dead", "list", "--limit", "-1"), "--limit"),
        (("dead", "list", "--limit", "1.5"), "--limit"),
        (("dead", "list", "--limit", "100000000000000000000"), "--limit"),
        (("consumers", "prune", "--idle-seconds", "nan"), "--idle-seconds"),
        (("consumers", "prune", "--idle-seconds", "inf"), "--idle-seconds"),
        (("consumers", "prune", "--idle-seconds", "-5"), "--idle-seconds"),
        (("consumers", "prune", "--idle-seconds", "1e308"), "--idle-seconds"),
        (("consumers", "prune", "--idle-seconds", "x"), "--idle-seconds"),
        (("health", "--worker", ""), "--worker"),
        (("health", "--worker", "a b"), "--worker"),
        (("health", "--worker", "a\x1bb"), "--worker"),
        (("stats", "--queue", "bad{name}"), "--queue"),
        (("--queue", "bad{name}", "stats"), "--queue"),
        (("--queue", "", "dead", "list"), "--queue"),
    ],
)
def test_bad_argument_exits_2_naming_it(
    redis_server: RedisServer, db: redis_sync.Redis, args: tuple[str, ...], argument: str
) -> None:
    add_dead_letter(db, 1)
    db.xadd(STREAM, {"x": "1"})
    result = admin(redis_server.url, *args)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    *_, last = result.stderr.splitlines()
    assert f"error: argument {argument}: " in last
    assert "Traceback" not in result.stderr
    assert (db.xlen(DEAD), db.xlen(STREAM)) == (1, 1)  # nothing was changed


@pytest.mark.parametrize(
    "args",
    [
        ("--queue", "other", "stats"),
        ("stats", "--queue", "other"),
        ("--json", "--queue", "other", "stats"),
        ("--queue", "emails", "stats", "--queue", "other"),  # the last one given wins
    ],
)
def test_queue_before_or_after_the_command(
    redis_server: RedisServer, db: redis_sync.Redis, args: tuple[str, ...]
) -> None:
    result = admin(redis_server.url, *args, *([] if "--json" in args else ["--json"]))
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["queue"] == "other"


def test_queue_between_group_and_action(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    assert admin_json(redis_server.url, "--queue", "other", "dead", "list") == []
    add_dead_letter(db, 1)
    assert admin_json(redis_server.url, "dead", "--queue", "other", "list") == []
    assert len(admin_json(redis_server.url, "dead", "list", "--queue", "emails")) == 1  # type: ignore[arg-type]


def test_good_ids_and_numbers_are_accepted(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    dead_id, _ = add_dead_letter(db, 1)
    ms, seq = dead_id.split("-")
    padded = f"0{ms}-0{seq}"  # Redis reads it as the same id; so do we
    shown = admin_json(redis_server.url, "dead", "show", padded)
    assert isinstance(shown, dict)
    assert shown["dead_id"] == dead_id
    listed = admin_json(redis_server.url, "dead", "list", "--after", ms, "--limit", "1")
    assert isinstance(listed, list)
    assert [item["dead_id"] for item in listed] == [dead_id]
    assert admin_json(redis_server.url, "consumers", "prune", "--idle-seconds", "0") == {
        "removed": []
    }
    # The same id twice is one letter, requeued once.
    requeued = admin_json(redis_server.url, "dead", "requeue", dead_id, padded)
    ((new_id, _),) = as_entries(db.xrange(STREAM))
    assert requeued == {"requeued": 1, "entries": {dead_id: new_id.decode()}}
