"""`make dashboard-demo`: the dashboard on a queue with traffic, from a clean clone.

Starts a private redis-server (data under `var/demo/`), an SMTP sink that refuses one domain
(so that dead letters appear), a worker limited to 5 emails/s (so that the send limits and the
drain forecast show), the dashboard on loopback, and a producer: a burst of 300 emails, then 3
a second, some scheduled for later, some to the refused domain. Prints the dashboard's URL.
Ctrl-C (or SIGTERM) stops everything; `--seconds N` stops by itself after N seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..connection import connect_redis
from ..producer import Producer
from ..task import EmailTask
from .mail_sink import MailSink
from .ports import free_port
from .redis_server import RedisServer

VAR: Final = Path("var") / "demo"
REFUSED_DOMAIN: Final = "bounce.example"
_BURST: Final = 300
_PER_SECOND: Final = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo until interrupted (or for `--seconds`); return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m service.local.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--port", type=int, default=None, help="the dashboard's port")
    args = parser.parse_args(argv)
    stop = asyncio.Event()
    redis = RedisServer(VAR / "redis")
    sink = MailSink(VAR / "mail", free_port(), refused_domain=REFUSED_DOMAIN)
    children: list[subprocess.Popen[bytes]] = []
    try:
        redis.start()
        redis_flush(redis.url)
        sink.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHBOARD_", "SMTP_"))}
        env.update(
            REDIS_URL=redis.url,
            EMAIL_QUEUE="emails",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(sink.port),
            SMTP_SECURITY="none",
            SMTP_RATE_LIMIT="5/s",
            MAIL_FROM="demo@example.com",
            WORKER_HEARTBEAT_SECONDS="2",
            WORKER_MAX_ATTEMPTS="2",
            LOG_LEVEL="WARNING",
        )
        port = args.port or free_port()
        children.append(_child(["service.worker"], env))
        children.append(_child(["service.dashboard"], {**env, "DASHBOARD_PORT": str(port)}))
        print(
            f"dashboard demo: http://127.0.0.1:{port}/ (redis {redis.url}, SMTP sink "
            f"127.0.0.1:{sink.port} refusing @{REFUSED_DOMAIN}, logs in {VAR}/); Ctrl-C stops",
            flush=True,
        )
        asyncio.run(_traffic(redis.url, stop, args.seconds))
    except (OSError, RuntimeError) as exc:
        print(f"dashboard demo: {exc}", file=sys.stderr)
        return 1
    else:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        sink.stop()
        redis.stop()


def redis_flush(url: str) -> None:
    """Start from an empty queue: the demo's Redis is its own, under var/demo/."""

    async def flush() -> None:
        client = connect_redis(url)
        try:
            await client.flushdb()
        finally:
            await client.aclose()

    asyncio.run(flush())


def _child(module: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own process group: the terminal's Ctrl-C reaches only us, and we stop it in order.
    # Its log goes to a file: the terminal keeps the URL in view.
    with (VAR / f"{module[0]}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *module],
            env=env,
            process_group=0,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _traffic(url: str, stop: asyncio.Event, seconds: float | None) -> None:
    """A burst, then a steady trickle, until a stop signal (or `seconds`)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if seconds is not None:
        loop.call_later(seconds, stop.set)
    numbers = itertools.count(1)
    async with Producer.from_url(url) as producer:
        await producer.enqueue_many([_email(next(numbers)) for _ in range(_BURST)])
        while not stop.is_set():
            for _ in range(_PER_SECOND):
                n = next(numbers)
                delay = 60 * (n % 90) if n % 10 == 0 else None
                await producer.enqueue(_email(n), delay=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def _email(n: int) -> EmailTask:
    kind = ("welcome", "invoice", "reset")[n % 3]
    to = f"nobody{n}@{REFUSED_DOMAIN}" if n % 9 == 0 else f"user{n}@example.com"
    return EmailTask(
        to=to,
        subject=f"{kind.capitalize()} #{n}",
        text=f"Hello user {n}, this is your {kind} email.",
        html=f"<p>Hello user {n}, this is your <b>{kind}</b> email.</p>",
        tags=[kind, f"user:{n}"],
    )


if __name__ == "__main__":
    sys.exit(main())
