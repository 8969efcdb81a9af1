"""`python -m service.worker`: build the settings, wire the parts, run until a signal."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable
from typing import Final

import structlog

from ..connection import connect_redis
from ..errors import ConfigError
from ..keys import QueueKeys
from ..logs import configure_logging
from ..settings import WorkerSettings, load_settings, redact_url
from ..store import QueueStore
from . import eventloop
from .backoff import TRANSIENT_REDIS_ERRORS
from .breaker import SmtpBreaker
from .delivery import Delivery
from .heartbeat import Heartbeat
from .metrics import WorkerMetrics
from .pacing import Pacer
from .relay_limits import RelayLimits, longest_wait_s
from .relays import RelaySet
from .shutdown import Shutdown, cancel_and_wait
from .supervision import Supervision
from .worker import Worker

log = structlog.get_logger("service.worker")
# Allocations between two collections of the youngest generation (see tune_garbage_collector).
YOUNG_COLLECTION_THRESHOLD: Final = 10_000


def main() -> int:
    """Exit codes: 0 stopped cleanly, 1 failed or forced to stop, 2 invalid settings."""
    try:
        settings = load_settings(WorkerSettings)
    except ConfigError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr)
        return 2
    configure_logging(level=settings.log_level, json=settings.json_logs)
    # Here, not in `serve`: tests run `serve` inside their own process, which must not freeze.
    tune_garbage_collector()
    try:
        return eventloop.run(serve_until_signalled(settings), choice=settings.worker_event_loop)
    except ConfigError as exc:  # what only the running worker can find: a metrics port in use
        print(f"error: invalid setting {exc}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("worker_crashed")
        return 1


async def serve_until_signalled(settings: WorkerSettings) -> int:
    """`serve`, stopped by SIGTERM or SIGINT (the first drains, the second forces)."""
    shutdown = Shutdown(settings.worker_shutdown_seconds)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.request, sig.name)
    return await serve(settings, shutdown)


async def serve(settings: WorkerSettings, shutdown: Shutdown) -> int:
    """Run one worker until `shutdown` is requested and it has stopped; the exit code."""
    redis_url = settings.redis_url.get_secret_value()
    redis = connect_redis(redis_url)
    # Looked up once, off the event loop: getfqdn() can block on DNS.
    local_hostname = await asyncio.to_thread(socket.getfqdn)
    store = QueueStore(redis, QueueKeys(settings.email_queue), status_ttl=settings.task_status_ttl)
    consumer = consumer_name(settings)
    metrics = WorkerMetrics(settings.email_queue)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    relay_limits = RelayLimits(
        settings.relays,
        store,
        metrics,
        per_recipient=settings.smtp_rate_cost == "recipient",
        longest_wait_s=longest_wait_s(
            timeout_s=settings.smtp_timeout_seconds,
            reclaim_s=settings.worker_reclaim_idle_seconds,
        ),
        stopping=shutdown.requested,
    )
    smtp = RelaySet(settings, local_hostname=local_hostname, limits=relay_limits)
    breaker = SmtpBreaker(smtp.probe)
    pacer = Pacer(settings, store, metrics, stopping=shutdown.requested, relays=smtp)
    delivery = Delivery(
        settings,
        store,
        consumer=consumer,
        smtp=smtp,
        breaker=breaker,
        metrics=metrics,
        pacer=pacer,
    )
    worker = Worker(
        settings,
        store,
        consumer=consumer,
        delivery=delivery,
        breaker=breaker,
        shutdown=shutdown,
        pacer=pacer,
        send_capacity=lambda: smtp.capacity,
    )
    heartbeat = Heartbeat(
        store,
        consumer,
        metrics,
        interval=settings.worker_heartbeat_seconds,
        state=lambda: worker.state,
        smtp_connections=lambda: {"busy": worker.in_flight, "idle": smtp.idle_connections},
        relays=smtp.states,
    )
    log.info(
        "worker_starting",
        redis=redact_url(redis_url),
        smtp=[f"{relay.name}={relay.address}" for relay in settings.relays]
        if settings.smtp_relays_file
        else f"{settings.smtp_host}:{settings.smtp_port_or_default}",
        smtp_security=settings.smtp_security if not settings.smtp_relays_file else None,
        relay_mode=settings.relay_mode if settings.smtp_relays_file else None,
        rate_limit=settings.smtp_rate_limit,
        daily_quota=settings.smtp_daily_quota,
        event_loop=eventloop.loop_name(settings.worker_event_loop),
        metrics=f"{settings.metrics_host}:{settings.metrics_port}"
        if settings.metrics_port
        else None,
        pid=os.getpid(),
    )
    supervision = Supervision(
        redis,
        store,
        shutdown,
        status=f"delivering queue {settings.email_queue}",
        limits=pacer.config.active,
        domains=bool(settings.domain_limits),
    )
    beating: asyncio.Task[None] | None = None
    try:
        async with supervision:  # systemd READY/STOPPING/WATCHDOG
            exit_code = await supervision.start_up()  # Redis reachable, looked at, permitted
            if exit_code is not None:
                return exit_code
            beating = asyncio.create_task(heartbeat.run(), name="heartbeat")
            return await worker.run()
    finally:
        # The last steps share what is left of the shutdown deadline, a round trip each.
        shutdown.begin()
        if beating is not None:
            await cancel_and_wait([beating], "worker stopped")
        seconds = shutdown.remaining()
        last_steps = [_best_effort(smtp.close(), seconds, "smtp_quit_skipped")]
        if beating is not None:  # a heartbeat was written: remove it
            removal = heartbeat.remove()
            failed = "heartbeat_left_behind"
            last_steps.append(_best_effort(removal, seconds, failed, consumer=consumer))
        await asyncio.gather(*last_steps)
        await redis.aclose()


async def _best_effort(step: Awaitable[None], seconds: float, failed: str, **about: str) -> None:
    """Run a last step within `seconds`; log the event `failed` if it fails or runs late."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except (TimeoutError, *TRANSIENT_REDIS_ERRORS):
        log.info(failed, **about)


def tune_garbage_collector() -> None:
    """Move what start-up made (the modules, pydantic's and structlog's machinery, the
    settings) out of the garbage collector's sight, once, before the event loop starts; then
    collect the youngest generation less often.

    Those objects live as long as the process, yet every full (oldest generation) collection
    walks them all: in the worker that was a pause of 80-240 ms now and then, stalling every
    email in flight and showing as the enqueue-to-accept p99 (docs/performance.md). Frozen,
    they are never scanned again; a collection first so that no garbage is frozen with them.

    A send allocates some hundreds of objects (futures, tasks, replies, log contexts), nearly
    all freed by reference counting within milliseconds. At the default threshold (700) a
    young collection runs every few emails and walks whatever is alive at that moment; at
    10,000 most of them are gone before a collection sees them, and each collection stays
    short (measured in docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def consumer_name(settings: WorkerSettings) -> str:
    """`WORKER_NAME` if set, else one no other process can have (two overlap on a deploy)."""
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


if __name__ == "__main__":
    sys.exit(main())
