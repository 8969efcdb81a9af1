"""The start-up configuration check against real redis-servers: a bad one, one without CONFIG,
and one started from the shipped `config/redis.conf`."""

from __future__ import annotations

from pathlib import Path

import orjson

from service.connection import connect_redis
from service.local.redis_server import free_port
from service.worker.redis_check import check_redis_config
from tests.conftest import WorkerProcess, wait_until
from tests.servers import redis_server

REDIS_CONF = Path(__file__).parents[2] / "config" / "redis.conf"


def events(worker: WorkerProcess) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in worker.output().splitlines()]


def test_worker_warns_about_a_redis_that_evicts_and_forgets(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    bad = ["--port", str(port), "--maxmemory-policy", "allkeys-lru", "--appendonly", "no",
           "--save", ""]  # fmt: skip
    with redis_server(tmp_path / "redis", bad, url):
        worker = WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path)
        try:
            wait_until(
                lambda: worker.output().count('"event":"redis_config_problem"') == 2, 15,
                "two configuration warnings",
            )  # fmt: skip
            worker.wait_for_log("worker_started")
            assert worker.stop() == 0
        finally:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    problems = [e for e in events(worker) if e["event"] == "redis_config_problem"]
    assert {(e["level"], e["setting"], e["value"]) for e in problems} == {
        ("warning", "maxmemory-policy", "allkeys-lru"),
        ("warning", "appendonly", "no (and save is empty)"),
    }


def test_a_disabled_config_command_is_noted_and_the_worker_goes_on(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    # What managed services do: CONFIG renamed away.
    with redis_server(tmp_path / "redis", ["--port", str(port), "--rename-command", "CONFIG", ""],
                      url):  # fmt: skip
        worker = WorkerProcess({**worker_env, "REDIS_URL": url}, tmp_path)
        try:
            worker.wait_for_log("redis_config_unchecked")
            worker.wait_for_log("worker_started")
            assert worker.stop() == 0
        finally:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    (note,) = [e for e in events(worker) if e["event"] == "redis_config_unchecked"]
    assert note["level"] == "info"
    assert "unknown command" in str(note["reason"]).lower()


async def test_the_shipped_redis_conf_passes_the_check(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    # The file as shipped; only where it listens and writes changes for the test.
    with redis_server(tmp_path / "redis", ["--port", str(port)], url, config_file=REDIS_CONF):
        client = connect_redis(url)
        try:
            assert await check_redis_config(client) == []
            assert await client.config_get("maxmemory") == {"maxmemory": str(1024**3)}
            assert (await client.config_get("appendfsync"))["appendfsync"] == "everysec"
        finally:
            await client.aclose()
