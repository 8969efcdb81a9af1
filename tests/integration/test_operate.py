"""Operating a running worker: heartbeats, `admin health`, Prometheus metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from typing import Any

import orjson
import redis as redis_sync

from service import EmailTask
from service.local.redis_server import RedisServer, free_port
from tests.conftest import enqueue, wait_until
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

WORKERS = "{emails}:workers"


def health(redis_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "service.admin", "health", "--json", *args],
        capture_output=True,
        text=True,
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        timeout=30,
        check=False,
    )
    return result.returncode, orjson.loads(result.stdout)


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics, as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if match:
            samples[match[1]] = float(match[2])
    return samples


def test_heartbeat_health_and_metrics_of_a_running_worker(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.behaviour.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    port = free_port()
    worker = start_worker(WORKER_HEARTBEAT_SECONDS="0.2", METRICS_PORT=str(port))
    tasks = [EmailTask(to=f"u{n}@example.com", subject="s", text="x") for n in range(5)]
    enqueue(redis_server.url, [*tasks, EmailTask(to="gone@example.com", subject="s", text="x")])
    wait_until(lambda: len(smtp.received) == 5 and db.xlen("{emails}:dead") == 1, 10, "all six")

    def counts_published() -> bool:
        code, report = health(redis_server.url)
        return code == 0 and report["workers"][0]["outcomes"] == {"sent": 5, "dead_letter": 1}

    wait_until(counts_published, 10, "the heartbeat with the counts")
    code, report = health(redis_server.url)
    assert report["healthy"] is True
    (beat,) = report["workers"]
    assert (beat["live"], beat["state"], beat["pid"]) == (True, "sending", worker.process.pid)
    assert beat["age_s"] < 1.0

    q = '{queue="emails"}'
    wait_until(lambda: scrape(port).get(f"email_queue_dead_letters{q}") == 1.0, 5, "gauges")
    metrics = scrape(port)
    assert metrics[f"email_worker_sent_total{q}"] == 5.0
    assert metrics[f"email_worker_dead_lettered_total{q}"] == 1.0
    assert metrics['email_worker_failed_total{outcome="dead_letter",queue="emails"}'] == 1.0
    assert metrics[f"email_worker_send_duration_seconds_count{q}"] == 6.0
    assert metrics[f"email_queue_backlog{q}"] == 0.0
    assert metrics[f"email_queue_delayed{q}"] == 0.0
    assert metrics[f"email_worker_smtp_paused{q}"] == 0.0
    assert metrics['email_worker_smtp_connections{queue="emails",state="idle"}'] >= 1.0

    # Killed: its heartbeat goes stale and health fails (exit 1), naming it dead.
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait()
    wait_until(lambda: health(redis_server.url)[0] == 1, 5, "health to fail")
    code, report = health(redis_server.url)
    (beat,) = report["workers"]
    assert (code, beat["live"]) == (1, False)
    assert report["reason"] == "no worker has a recent heartbeat"
    pruned = subprocess.run(
        [sys.executable, "-m", "service.admin", "consumers", "prune", "--idle-seconds", "0"],
        env={"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=False,
    )
    assert pruned.returncode == 0
    assert db.hlen(WORKERS) == 0


def test_paused_worker_is_live_and_says_why(
    redis_server: RedisServer, db: redis_sync.Redis, smtp: SmtpServer, start_worker: StartWorker
) -> None:
    smtp.stop()
    enqueue(redis_server.url, [EmailTask(to="a@example.com", subject="s", text="x")])
    worker = start_worker(WORKER_HEARTBEAT_SECONDS="0.2")
    worker.wait_for_log("smtp_unavailable")

    def paused() -> bool:
        workers = health(redis_server.url)[1]["workers"]
        return bool(workers) and workers[0]["state"] == "paused"

    wait_until(paused, 5, "the paused state in the heartbeat")
    assert health(redis_server.url, "--worker", "someone-else")[0] == 1
    assert worker.stop() == 0
    assert db.hlen(WORKERS) == 0  # a clean stop removes its record
