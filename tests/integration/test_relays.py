"""Several SMTP relays end to end: failover under load, return after the probe, weights,
routing by sender domain, and a bad relays file refused at start-up.

Each test runs `python -m service.worker` as a real subprocess against a real redis-server and
real SMTP servers (aiosmtpd), stopped for real to play a relay outage.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_sync

from service import EmailTask, SyncProducer, TaskState
from service.local.redis_server import RedisServer, free_port
from tests.conftest import WorkerProcess, dead_letters, enqueue, pending_count, wait_until
from tests.integration.test_admin import admin_json
from tests.integration.test_operate import scrape
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer


@pytest.fixture
def backup() -> Iterator[SmtpServer]:
    """A second SMTP server: the backup relay (stopped at the end if still running)."""
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


def _relays_file(tmp_path: Path, mode: str, *relays: str) -> str:
    path = tmp_path / "relays.toml"
    path.write_text(f'mode = "{mode}"\n' + "".join(relays))
    return str(path)


def _relay(name: str, server: SmtpServer, **extra: object) -> str:
    lines = [f'name = "{name}"', 'host = "127.0.0.1"', f"port = {server.port}", 'security = "none"']
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in extra.items()]
    return "[[relay]]\n" + "\n".join(lines) + "\n"


def _start(
    start_worker: StartWorker, worker_env: dict[str, str], relays_file: str, **overrides: str
) -> WorkerProcess:
    """A worker with the relays file instead of the one relay of SMTP_HOST and SMTP_PORT."""
    for variable in ("SMTP_HOST", "SMTP_PORT"):  # start_worker reads this same dict
        worker_env.pop(variable, None)
    return start_worker(SMTP_RELAYS_FILE=relays_file, **overrides)


def _tasks(count: int, sender: str | None = None) -> list[EmailTask]:
    to = [f"r{i}@example.net" for i in range(count)]
    return [EmailTask(to=address, subject="s", text="x", sender=sender) for address in to]


def _events(output: str, event: str) -> list[dict[str, object]]:
    lines = (orjson.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def test_the_primary_killed_under_load_fails_over_to_the_backup_and_back(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    backup: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    smtp.behaviour.data_delay = 0.01  # a steady load: sends in flight when the primary dies
    relays = _relays_file(tmp_path, "failover", _relay("primary", smtp), _relay("backup", backup))
    worker = _start(start_worker, worker_env, relays, WORKER_HEARTBEAT_SECONDS="0.2")
    ids = enqueue(redis_server.url, _tasks(600))
    wait_until(lambda: len(smtp.received) >= 100, 30, "the primary carrying the load")
    assert backup.received == []  # failover mode: the backup waits while the primary works
    smtp.stop()
    killed_at = time.time()
    wait_until(lambda: len(backup.received) >= 1, 15, "the backup taking over")
    failover_s = backup.received[0].at - killed_at
    wait_until(lambda: set(smtp.task_ids()) | set(backup.task_ids()) >= set(ids), 60, "all sent")
    wait_until(lambda: pending_count(db) == 0, 10, "every entry settled")

    sent = Counter(smtp.task_ids() + backup.task_ids())
    duplicates = sum(n - 1 for n in sent.values())
    assert set(sent) == set(ids)  # 0 lost
    assert dead_letters(db) == []
    # Only a send cut off after the primary took its message may go out twice: at most one per
    # connection open when it died (WORKER_CONCURRENCY).
    assert duplicates <= int(worker_env["WORKER_CONCURRENCY"])
    assert failover_s < 3.0
    output = worker.output()
    (down,) = _events(output, "relay_unavailable")
    assert down["relay"] == "primary"
    assert _events(output, "smtp_unavailable") == []  # the worker never paused
    via = Counter(str(event.get("relay")) for event in _events(output, "task_sent"))
    assert via["primary"] + via["backup"] == len(_events(output, "task_sent"))
    assert via["backup"] == len(backup.received)  # each delivery's log line names its relay
    print(f"\nfailover: {failover_s:.3f} s; duplicates: {duplicates}; primary {len(smtp.received)}")
    # `admin stats` names the relays as the worker sees them, with its sends over each.
    time.sleep(0.5)  # two heartbeats
    stats = admin_json(redis_server.url, "stats")
    assert isinstance(stats, dict)
    rows = {row["name"]: row for row in stats["relays"]}
    assert (rows["primary"]["down"], rows["backup"]["up"]) == (1, 1)
    assert rows["backup"]["sent"] == len(backup.received)

    # The primary comes back on its port: the probe finds it and mail returns to it.
    primary = SmtpServer(port=smtp.port)
    primary.start()
    try:
        back_at = time.time()
        wait_until(lambda: "relay_available" in worker.output(), 40, "the primary probed back")
        probed_s = time.time() - back_at
        more = enqueue(redis_server.url, _tasks(50))
        wait_until(lambda: set(primary.task_ids()) >= set(more), 30, "mail back on the primary")
        assert not set(backup.task_ids()) & set(more)
        print(f"primary back: probed within {probed_s:.1f} s")
    finally:
        primary.stop()


def test_weighted_relays_share_the_mail_as_configured(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    backup: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    relays = _relays_file(
        tmp_path, "weighted", _relay("big", smtp, weight=3), _relay("small", backup, weight=1)
    )
    _start(start_worker, worker_env, relays)
    ids = enqueue(redis_server.url, _tasks(800))
    wait_until(lambda: len(smtp.received) + len(backup.received) >= len(ids), 60, "all sent")
    share = len(smtp.received) / len(ids)
    # 800 draws at 3:1: the share's standard deviation is 1.5 points; 0.70..0.80 is 3.3 of them.
    assert 0.70 <= share <= 0.80, share
    assert set(smtp.task_ids()) | set(backup.task_ids()) == set(ids)
    assert dead_letters(db) == []


def test_mail_is_routed_by_sender_domain(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    backup: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    # "corp" takes only corp.example; "general" only example.com (MAIL_FROM's domain).
    relays = _relays_file(
        tmp_path,
        "failover",
        _relay("corp", smtp, from_domains=["Corp.Example"]),
        _relay("general", backup, from_domains=["example.com"]),
    )
    backup.behaviour.rcpt_replies = {"gone@example.net": "550 5.1.1 no such user"}
    metrics_port = free_port()
    _start(start_worker, worker_env, relays, METRICS_PORT=str(metrics_port))
    corp = enqueue(redis_server.url, _tasks(20, sender="boss@corp.example"))
    general = enqueue(redis_server.url, _tasks(20))  # the default sender, MAIL_FROM
    stray = enqueue(redis_server.url, _tasks(1, sender="x@other.org"))
    refused = enqueue(redis_server.url, [EmailTask(to="gone@example.net", subject="s", text="x")])
    wait_until(lambda: len(dead_letters(db)) == 2, 30, "two dead letters")
    wait_until(lambda: len(smtp.received) + len(backup.received) == 40, 30, "the others sent")

    assert sorted(smtp.task_ids()) == sorted(corp)
    assert sorted(backup.task_ids()) == sorted(general)
    reasons = {d[b"id"].decode(): d[b"dead_reason"].decode() for d in dead_letters(db)}
    assert reasons[stray[0]] == "no relay accepts senders of 'other.org'"
    assert reasons[refused[0]].endswith("(relay general)")
    with SyncProducer.from_url(redis_server.url) as producer:
        status = producer.status(corp[0])
        assert (status.state, status.reply) == (TaskState.SENT, "SMTP 250 OK queued (relay corp)")
        assert producer.status(refused[0]).reason.endswith("(relay general)")
    samples = scrape(metrics_port)
    sends = 'email_worker_relay_sends_total{queue="emails",relay="%s",result="%s"}'
    assert samples[sends % ("corp", "sent")] == 20
    assert samples[sends % ("general", "sent")] == 20
    assert samples[sends % ("general", "failed")] == 1


@pytest.mark.parametrize(
    ("relay", "line"),
    [
        ('[[relay]]\nname = "a"\nhost = "127.0.0.1"\nport = 0\n', "relay[1].port:"),
        ('[[relay]]\nname = "a"\n', "relay[1].host: is required but not set"),
        (
            '[[relay]]\nname = "a"\nhost = "smtp.example.com"\nsecurity = "none"\n'
            'username = "u"\npassword = "pw-never-shown"\n',
            "relay[1]: security 'none' would send credentials in clear text",
        ),
    ],
)
def test_a_bad_relays_file_stops_the_start_up_naming_the_field(
    *, worker_env: dict[str, str], tmp_path: Path, relay: str, line: str
) -> None:
    relays = _relays_file(tmp_path, "failover", relay)
    env = {k: v for k, v in worker_env.items() if k not in ("SMTP_HOST", "SMTP_PORT")}
    done = subprocess.run(
        [sys.executable, "-m", "service.worker"],
        env={**env, "SMTP_RELAYS_FILE": relays},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    (printed,) = (done.stdout + done.stderr).strip().splitlines()
    assert printed.startswith("error: invalid setting SMTP_RELAYS_FILE: ")
    assert line in printed
    assert "pw-never-shown" not in printed


def test_a_relay_refusing_sessions_is_skipped_and_used_again_once_it_takes_them(
    *,
    redis_server: RedisServer,
    smtp: SmtpServer,
    backup: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    password = "pw-in-the-file-0042"  # noqa: S105 - a test value, looked for in the logs
    smtp.behaviour.credentials = ("user", "another-password")  # AUTH fails: 535
    primary = _relay("primary", smtp, username="user", password=password)
    relays = _relays_file(tmp_path, "failover", primary, _relay("backup", backup))
    worker = _start(start_worker, worker_env, relays)
    first = enqueue(redis_server.url, _tasks(20))
    wait_until(lambda: sorted(backup.task_ids()) == sorted(first), 15, "the backup carrying it")
    assert smtp.received == []
    (down,) = _events(worker.output(), "relay_unavailable")
    assert down["relay"] == "primary"
    assert "authentication failed (SMTP 535)" in str(down["reason"])

    smtp.behaviour.credentials = ("user", password)  # the provider fixed the account
    worker.wait_for_log("relay_available", timeout=20)
    second = enqueue(redis_server.url, _tasks(20))
    wait_until(lambda: sorted(smtp.task_ids()) == sorted(second), 15, "mail back on the primary")
    output = worker.output()
    assert _events(output, "smtp_unavailable") == []  # the worker itself never paused
    assert password not in output


def test_a_hanging_relay_is_skipped_without_risking_a_reclaimed_duplicate(
    *,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    backup: SmtpServer,
    worker_env: dict[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    # A primary that takes connections and never greets: each session times out after
    # SMTP_TIMEOUT_SECONDS (2 s). A slow backup (1.5 s a message) right after would pass the
    # reclaim delay (3 s), and another worker could send the email again: those emails go back
    # unsent, uncounted, and reach the backup on their next delivery.
    backup.behaviour.data_delay = 1.5
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        port = silent.getsockname()[1]
        primary = (
            f'[[relay]]\nname = "primary"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        )
        relays = _relays_file(tmp_path, "failover", primary, _relay("backup", backup))
        workers = [_start(start_worker, worker_env, relays) for _ in range(2)]
        ids = enqueue(redis_server.url, _tasks(30))
        wait_until(lambda: pending_count(db) == 0 and len(backup.received) >= 30, 30, "all sent")
    assert sorted(backup.task_ids()) == sorted(ids)  # each once
    output = "".join(worker.output() for worker in workers)
    assert dead_letters(db) == []
    assert _events(output, "entry_reclaimed") == []
    assert _events(output, "task_retry_scheduled") == []  # no attempt used
    down = _events(output, "relay_unavailable")
    assert {event["relay"] for event in down} == {"primary"}
    assert all("timed out" in str(event["reason"]) for event in down)
    with SyncProducer.from_url(redis_server.url) as producer:
        assert {producer.status(task_id).attempts for task_id in ids} == {0}
