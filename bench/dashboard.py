"""`python -m bench.dashboard`: what each dashboard page costs on a large queue.

Fills a private redis-server with a large queue (100,000 entries in the stream, 1,000 of them
pending, 10,000 delayed, 10,000 dead letters, three worker heartbeats, an hour of minute
history), then requests each page through the app in-process (Starlette's TestClient: no
network, the app's own Redis client) and reports, per page, the round trips its Redis client
made (a pipeline or a script is one: counted by wrapping the client connection's send), the
commands Redis ran (INFO's total_commands_processed, those inside scripts included), and the
median and 95th percentile time of a request (page rendering included).

    python -m bench.dashboard                      # the sizes above, 20 requests a page
    python -m bench.dashboard --queued 10000 --dead 1000 --requests 5   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync
from pydantic import SecretStr
from redis.asyncio.connection import AbstractConnection
from starlette.testclient import TestClient

from service import EmailTask, Producer
from service.dashboard import create_app
from service.keys import CONSUMER_GROUP, QueueKeys
from service.local.redis_server import RedisServer
from service.settings import DashboardSettings
from service.wire import dead_entry, encode_entry

_KEYS = QueueKeys("emails")


def main() -> int:
    """Fill, measure, print a Markdown table; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--dead", type=int, default=10_000)
    parser.add_argument("--delayed", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch))
        server.start()
        try:
            started = time.monotonic()
            probe = asyncio.run(_fill(server.url, args.queued, args.delayed))
            db = redis_sync.Redis.from_url(server.url)
            dead_probe = _fill_dead(db, args.dead)
            _fill_workers(db)
            print(
                f"filled in {time.monotonic() - started:.1f} s: stream {db.xlen(_KEYS.stream):,}, "
                f"delayed {db.zcard(_KEYS.delayed):,}, dead {db.xlen(_KEYS.dead):,}, "
                f"used_memory {db.info('memory')['used_memory_human']}",
                flush=True,
            )
            rows = _measure(server.url, db, args.requests, probe, dead_probe)
        finally:
            server.stop()
    print(_table(rows))
    return 0


async def _fill(url: str, queued: int, delayed: int) -> str:
    """The stream and the delayed set; returns the id of a delayed task to look up."""
    async with Producer.from_url(url, max_backlog=None) as producer:
        batch = 1_000
        for start in range(0, queued, batch):
            tasks = [_task(n) for n in range(start, min(start + batch, queued))]
            await producer.enqueue_many(tasks)
        ids: list[str] = []
        for start in range(0, delayed, batch):
            tasks = [_task(n) for n in range(start, min(start + batch, delayed))]
            ids += await producer.enqueue_many(tasks, delay=timedelta(hours=1 + start // batch))
    return ids[len(ids) // 2]


def _task(n: int) -> EmailTask:
    return EmailTask(
        to=f"user{n}@example{n % 50}.com",
        subject=f"Welcome #{n}",
        text="Hello " * 100,
        tags=["welcome", f"user:{n}"],
    )


def _fill_dead(db: redis_sync.Redis, count: int) -> str:
    """Dead letters as the worker writes them, 1 in 100 with a rare reason; returns one's id."""
    now_ms = time.time_ns() // 1_000_000
    with db.pipeline(transaction=False) as pipe:
        for n in range(count):
            fields = encode_entry(_task(n), f"{n:032x}", now_ms)
            reason = "552 5.2.2 mailbox full" if n % 100 == 0 else "550 5.1.1 no such user"
            record = dead_entry(
                {k.encode(): v for k, v in fields.items()},
                reason=reason, entry_id="1-0", deliveries=1, tries=1, consumer="w1",
            )  # fmt: skip
            pipe.xadd(_KEYS.dead, record)  # type: ignore[arg-type]
        ids = pipe.execute()
    db.xgroup_create(_KEYS.stream, CONSUMER_GROUP, id="0", mkstream=True)
    db.xreadgroup(CONSUMER_GROUP, "w1", {_KEYS.stream: ">"}, count=1_000)
    return str(ids[count // 2].decode())


def _fill_workers(db: redis_sync.Redis) -> None:
    now = time.time()
    for n in range(3):
        record = {"consumer": f"w{n}", "host": "bench", "pid": n, "state": "sending",
                  "state_since": now, "started_at": now, "beat_at": now, "interval_s": 10,
                  "outcomes": {"sent": 100 * n}}  # fmt: skip
        db.hset(_KEYS.workers, f"w{n}", orjson.dumps(record))
    minute = int(now // 60)
    with db.pipeline(transaction=False) as pipe:
        for m in range(minute - 59, minute + 1):
            pipe.hset(_KEYS.minute(m), mapping={"sent": 300, "failed": 3, "latency_ms_sum": 9000})
        pipe.execute()


class _RoundTrips:
    """Counts what the app's asyncio Redis client sends: one per command, pipeline or script."""

    count = 0

    def __init__(self) -> None:
        original = AbstractConnection.send_packed_command

        async def counted(connection: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            _RoundTrips.count += 1
            await original(connection, *args, **kwargs)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign, assignment]


def _measure(
    url: str, db: redis_sync.Redis, requests: int, delayed_id: str, dead_id: str
) -> list[tuple[str, int, int, float, float]]:
    _RoundTrips()
    mid_due = int(db.zrange(_KEYS.delayed, 5_000, 5_000, withscores=True)[0][1])
    pages = [
        ("/", "Overview"),
        ("/workers", "Workers"),
        ("/dead", "Dead letters, newest 50"),
        ("/dead?reason=mailbox+full", "Dead letters, filter 1 in 100 (scans 2,000)"),
        ("/dead?domain=example7.com", "Dead letters, filter 1 in 50"),
        (f"/dead/{dead_id}", "One dead letter"),
        (f"/dead/{dead_id}?bodies=1", "One dead letter with bodies"),
        ("/scheduled", "Scheduled, first page"),
        (f"/scheduled?from={mid_due}&skip=0", "Scheduled, a page deep in the set"),
        (f"/find?q={delayed_id}", "Find by task id"),
        ("/find?q=user:5000", "Find by tag (scans 2,000 dead letters)"),
        ("/dead/bulk?action=requeue&reason=mailbox+full", "Bulk confirmation (counts all dead)"),
    ]
    settings = DashboardSettings(redis_url=SecretStr(url))
    rows = []
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        for path, name in pages:
            for _ in range(2):  # warm: script cache, connection pool, templates
                client.get(path)
            before, trips = _commands(db), _RoundTrips.count
            response = client.get(path)
            trips = _RoundTrips.count - trips
            commands = _commands(db) - before - 1  # the INFO of `_commands` itself
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}")
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                client.get(path)
                times.append((time.perf_counter() - started) * 1000)
            p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
            rows.append((name, trips, commands, statistics.median(times), p95))
            print(f"{name}: {trips} round trips, {statistics.median(times):.1f} ms", flush=True)
    return rows


def _commands(db: redis_sync.Redis) -> int:
    return int(db.info("stats")["total_commands_processed"])


def _table(rows: list[tuple[str, int, int, float, float]]) -> str:
    lines = [
        "| page | round trips | commands | median ms | p95 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {trips} | {commands} | {median:.1f} | {p95:.1f} |"
        for name, trips, commands, median, p95 in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
