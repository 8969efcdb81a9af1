"""The start-up permission check against real Redis ACL users.

Redis 7 answers it with ACL DRYRUN, Redis 6.2 with ACL GETUSER; a user allowed neither is
told so, and the worker goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync

from service import EmailTask
from service.local.redis_server import free_port
from tests.conftest import STREAM, WorkerProcess, enqueue, wait_until
from tests.servers import redis_server
from tests.smtp_server import SmtpServer

# Everything the worker runs (in its scripts too), by category, without ACL itself.
_LEAST = ["-@all", "+@stream", "+@hash", "+@sortedset", "+@string", "+@scripting",
          "+@connection", "+info", "+exists", "+pexpireat"]  # fmt: skip


_OTHER_KEYS = ("keys {emails}:dead, {emails}:delayed, {emails}:delayed:entries, {emails}:minute:*, "
               "{emails}:sent:*, {emails}:status:*, {emails}:stream:high, {emails}:stream:low, "
               "{emails}:workers")  # fmt: skip


def _events(worker: WorkerProcess, name: str) -> list[dict[str, object]]:
    lines = (orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == name]


@contextlib.contextmanager
def worker_as(
    rules: list[str], worker_env: dict[str, str], tmp_path: Path, **settings: str
) -> Iterator[tuple[WorkerProcess, redis_sync.Redis, list[str]]]:
    """Redis with a user `worker` having `rules`, one task enqueued, a worker logged in as it."""
    port = free_port()
    admin_url = f"redis://127.0.0.1:{port}/0"
    with redis_server(tmp_path / "redis", ["--port", str(port), "--save", ""], admin_url):
        db = redis_sync.Redis.from_url(admin_url)
        setuser = ("ACL", "SETUSER", "worker", "on", ">s3cret", *rules)
        db.execute_command(*setuser)  # type: ignore[no-untyped-call]
        task_ids = enqueue(admin_url, [EmailTask(to="a@example.com", subject="s", text="t")])
        url = f"redis://worker:s3cret@127.0.0.1:{port}/0"
        worker = WorkerProcess({**worker_env, "REDIS_URL": url, **settings}, tmp_path)
        try:
            yield worker, db, task_ids
        finally:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


@pytest.mark.parametrize(
    ("rules", "missing"),
    [
        (["~*", "+@all", "-evalsha"], ["evalsha"]),
        (["~*", "+@all", "-@scripting"], ["evalsha", "script|load"]),
        (["~*", "+@all", "-xautoclaim", "-xack"], ["xack", "xautoclaim"]),
        (["~{emails}:stream", "+@all"], [_OTHER_KEYS]),
    ],
)  # fmt: skip
def test_a_worker_missing_a_permission_exits_2_before_taking_an_entry(
    rules: list[str],
    missing: list[str],
    worker_env: dict[str, str],
    smtp: SmtpServer,
    tmp_path: Path,
) -> None:
    with worker_as(rules, worker_env, tmp_path) as (worker, db, _):
        code = worker.process.wait(timeout=20)
        assert code == 2, worker.output()[-3000:]
        assert smtp.received == []
        assert db.xlen(STREAM) == 1
        assert db.xinfo_groups(STREAM) == []  # not even the group: nothing was read
    (line,) = _events(worker, "redis_permissions_missing")
    assert line["level"] == "error"
    assert line["user"] == "worker"
    assert line["missing"] == missing
    assert "s3cret" not in worker.output()


def test_a_worker_with_send_limits_checks_the_limiter_s_permissions_too(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    rules = ["~*", "+@all", "-@list"]  # the quota's list commands
    with worker_as(rules, worker_env, tmp_path, SMTP_RATE_LIMIT="14/s") as (worker, db, _):
        del db
        assert worker.process.wait(timeout=20) == 2, worker.output()[-3000:]
        assert smtp.received == []
    (line,) = _events(worker, "redis_permissions_missing")
    assert line["missing"] == ["lindex", "llen", "lpop", "lrange", "lset", "rpush"]


def test_a_least_privilege_user_that_cannot_be_checked_is_noted_and_served(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    with worker_as(["~{emails}:*", *_LEAST], worker_env, tmp_path) as (worker, _, task_ids):
        worker.wait_for_log("worker_started")
        wait_until(lambda: smtp.task_ids() == task_ids, 10, "the email")
        assert worker.stop() == 0
    (note,) = _events(worker, "redis_permissions_unchecked")
    assert note["level"] == "info"
    assert "acl" in str(note["reason"]).lower()


def test_a_least_privilege_user_allowed_to_check_itself_passes(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    rules = ["~{emails}:*", *_LEAST, "+acl|dryrun", "+acl|getuser", "+acl|cat"]
    with worker_as(rules, worker_env, tmp_path) as (worker, _, task_ids):
        worker.wait_for_log("worker_started")
        wait_until(lambda: smtp.task_ids() == task_ids, 10, "the email")
        assert worker.stop() == 0
    assert _events(worker, "redis_permissions_unchecked") == []
    assert _events(worker, "redis_permissions_missing") == []


def test_a_worker_with_domain_limits_checks_their_permissions_too(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    rules = ["~*", "+@all", "-zrank", "-zremrangebyscore"]  # only the domain scripts use them
    limits = {"SMTP_DOMAIN_LIMITS": "example.com=10/s"}
    with worker_as(rules, worker_env, tmp_path, **limits) as (worker, db, _):
        del db
        assert worker.process.wait(timeout=20) == 2, worker.output()[-3000:]
        assert smtp.received == []
    (line,) = _events(worker, "redis_permissions_missing")
    assert line["missing"] == ["zrank", "zremrangebyscore"]


def test_a_least_privilege_user_with_domain_limits_passes(
    worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    rules = ["~{emails}:*", *_LEAST, "+time", "+type", "+acl|dryrun", "+acl|getuser", "+acl|cat"]
    limits = {"SMTP_DOMAIN_LIMITS": "example.com=10/s"}
    with worker_as(rules, worker_env, tmp_path, **limits) as (worker, _, task_ids):
        worker.wait_for_log("worker_started")
        wait_until(lambda: smtp.task_ids() == task_ids, 10, "the email")
        assert worker.stop() == 0
    assert _events(worker, "redis_permissions_missing") == []
