"""`python -m service.worker`: build the settings, wire the parts, run until a signal."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys

import structlog

from ..connection import connect_redis
from ..errors import ConfigError
from ..keys import QueueKeys
from ..logs import configure_logging
from ..settings import WorkerSettings, load_settings, redact_url
from . import eventloop
from .breaker import SmtpBreaker
from .delivery import Delivery
from .heartbeat import Heartbeat
from .metrics import WorkerMetrics
from .smtp import SmtpPool
from .stopping import cancel_and_wait
from .stream import TaskStream
from .supervision import Supervision
from .worker import Worker

log = structlog.get_logger("service.worker")


def main() -> int:
    """Exit codes: 0 stopped cleanly, 1 failed or forced to stop, 2 invalid settings."""
    try:
        settings = load_settings(WorkerSettings)
    except ConfigError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr)
        return 2
    configure_logging(level=settings.log_level, json=settings.json_logs)
    try:
        return eventloop.run(serve(settings), choice=settings.worker_event_loop)
    except Exception:
        log.exception("worker_crashed")
        return 1


async def serve(settings: WorkerSettings) -> int:
    """Run one worker process until it is told to stop."""
    redis_url = settings.redis_url.get_secret_value()
    redis = connect_redis(redis_url)
    # Looked up once, off the event loop: getfqdn() can block on DNS.
    local_hostname = await asyncio.to_thread(socket.getfqdn)
    smtp = SmtpPool(settings, size=settings.worker_concurrency, local_hostname=local_hostname)
    keys = QueueKeys(settings.email_queue)
    stream = TaskStream(redis, keys, consumer_name(settings))
    breaker = SmtpBreaker(smtp.probe)
    metrics = WorkerMetrics(settings.email_queue)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    worker = Worker(settings, stream, Delivery(settings, stream, smtp, breaker, metrics), breaker)
    heartbeat = Heartbeat(
        redis,
        keys,
        stream,
        metrics,
        interval=settings.worker_heartbeat_seconds,
        state=lambda: worker.state,
        smtp_connections=lambda: {"busy": worker.in_flight, "idle": smtp.idle_connections},
    )
    supervision = Supervision(redis, status=f"delivering queue {settings.email_queue}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervision.on_stop(worker.request_stop), sig.name)
    log.info(
        "worker_starting",
        redis=redact_url(redis_url),
        smtp=f"{settings.smtp_host}:{settings.smtp_port_or_default}",
        smtp_security=settings.smtp_security,
        event_loop=eventloop.loop_name(settings.worker_event_loop),
        metrics=f"{settings.metrics_host}:{settings.metrics_port}"
        if settings.metrics_port
        else None,
        pid=os.getpid(),
    )
    beating = asyncio.create_task(heartbeat.run(), name="heartbeat")
    try:
        async with supervision:  # systemd READY/STOPPING/WATCHDOG, Redis config check
            return await worker.run()
    finally:
        await cancel_and_wait([beating], "worker stopped")
        await heartbeat.remove()
        await smtp.close()
        await redis.aclose()


def consumer_name(settings: WorkerSettings) -> str:
    """`WORKER_NAME` if set, else one no other process can have (two overlap on a deploy)."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


if __name__ == "__main__":
    sys.exit(main())
