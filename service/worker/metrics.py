"""What the worker has done, counted: for its heartbeat and, optionally, for Prometheus.

Counts always exist (the heartbeat in Redis carries them). With `METRICS_PORT` set, the same
events also feed Prometheus metrics with the conventional names (`_total` counters, a
`_seconds` histogram, gauges), served on their own registry from prometheus_client's HTTP thread;
the queue's gauges are refreshed by the heartbeat loop, not on scrape, so a scrape never waits
on Redis.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ..listen import listen_error
from ..store import QueueSizes
from .history import MinuteTally

__all__ = ["WorkerMetrics"]

# From a fast local relay (milliseconds) to a slow remote one (tens of seconds).
_SEND_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """Counts of outcomes; Prometheus metrics too once `serve` was called."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.outcomes: Tally[str] = Tally()
        self.minutes = MinuteTally()  # the queue's minute history, written by the heartbeat
        # Sends by relay and result (sent, failed, unavailable).
        self.relay_sends: Tally[tuple[str, str]] = Tally()
        self._registry: CollectorRegistry | None = None

    def serve(self, host: str, port: int) -> None:
        """Expose the metrics over HTTP on `host`:`port` (`/metrics`).

        Raises `ConfigError` naming `METRICS_HOST` or `METRICS_PORT` when it cannot listen there.
        """
        registry = CollectorRegistry()
        labels = ["queue"]
        self._sent = Counter(
            "email_worker_sent",
            "Emails the SMTP server accepted (for some or all recipients).",
            labels,
            registry=registry,
        )
        self._failed = Counter(
            "email_worker_failed",
            "Attempts that did not reach every recipient, by outcome.",
            [*labels, "outcome"],
            registry=registry,
        )
        self._retried = Counter(
            "email_worker_retried", "Retry copies scheduled.", labels, registry=registry
        )
        self._dead = Counter(
            "email_worker_dead_lettered",
            "Dead-letter records written.",
            labels,
            registry=registry,
        )
        self._duration = Histogram(
            "email_worker_send_duration_seconds",
            "One attempt, from taking the entry to settling it.",
            labels,
            buckets=_SEND_BUCKETS,
            registry=registry,
        )
        self._queue = {
            name: Gauge(f"email_queue_{name}", help_text, labels, registry=registry)
            for name, help_text in (
                ("backlog", "Entries in the stream: waiting or being sent."),
                ("pending", "Entries handed to a worker and not yet settled."),
                ("lag", "Entries never handed to a worker."),
                ("delayed", "Retries and scheduled sends not yet due."),
                ("dead_letters", "Records in the dead-letter stream."),
            )
        }
        self._lanes = Gauge(
            "email_queue_lane_backlog",
            "Entries in one priority lane's stream: waiting or being sent.",
            [*labels, "lane"],
            registry=registry,
        )
        self._smtp = Gauge(
            "email_worker_smtp_connections",
            "SMTP connections of this worker, by state.",
            [*labels, "state"],
            registry=registry,
        )
        self._rate = Gauge(
            "email_worker_send_rate_per_second",
            "The shared send rate: the configured limit, and the effective one (lowered when "
            "the SMTP server asks to slow down).",
            [*labels, "kind"],
            registry=registry,
        )
        self._quota = Gauge(
            "email_worker_send_quota",
            "The rolling quota (SMTP_DAILY_QUOTA) and how much of it the window has used.",
            [*labels, "kind"],
            registry=registry,
        )
        self._relay_sends = Counter(
            "email_worker_relay_sends",
            "Sends by SMTP relay and result: sent (some or all recipients accepted), failed, "
            "unavailable (no session; the next relay was tried).",
            [*labels, "relay", "result"],
            registry=registry,
        )
        self._relay_up = Gauge(
            "email_worker_relay_up",
            "1 while the relay is usable, 0 while it is skipped and probed.",
            [*labels, "relay"],
            registry=registry,
        )
        self._relay_rate = Gauge(
            "email_worker_relay_send_rate_per_second",
            "A relay's own send rate (its rate_limit): the configured limit, and the effective "
            "one (lowered when that relay asks to slow down).",
            [*labels, "relay", "kind"],
            registry=registry,
        )
        self._relay_quota = Gauge(
            "email_worker_relay_send_quota",
            "A relay's own rolling quota (its daily_quota) and how much of it the window has used.",
            [*labels, "relay", "kind"],
            registry=registry,
        )
        self._domain = Gauge(
            "email_worker_domain_limit",
            "Per recipient domain (SMTP_DOMAIN_LIMITS): its limit per second, and the seconds "
            "until its next free slot as this worker last took one.",
            [*labels, "domain", "kind"],
            registry=registry,
        )
        self._paused = Gauge(
            "email_worker_smtp_paused",
            "1 while the SMTP circuit breaker holds intake.",
            labels,
            registry=registry,
        )
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise listen_error(
                exc,
                host,
                port,
                host_setting="METRICS_HOST",
                port_setting="METRICS_PORT",
                in_use=" (another worker on this machine?)",
            ) from exc
        self._registry = registry

    @property
    def serving(self) -> bool:
        """Whether Prometheus metrics are served (`METRICS_PORT` set)."""
        return self._registry is not None

    def record(
        self,
        outcome: str,
        duration_s: float,
        *,
        retried: bool = False,
        dead: bool = False,
        latency_ms: int | None = None,
    ) -> None:
        """Count one settled attempt.

        `outcome` is the logs' word (sent, partly_sent, retry, requeued, dead_letter, skipped);
        `retried` and `dead` say whether it scheduled a retry copy or wrote a dead letter;
        `latency_ms`: from enqueue (or due time) to the server's accept, for a sent email.
        """
        self.outcomes[outcome] += 1
        self.minutes.record(outcome, at_s=time.time(), latency_ms=latency_ms)
        if self._registry is None:
            return
        queue = self.queue
        self._duration.labels(queue).observe(duration_s)
        if outcome in ("sent", "partly_sent"):
            self._sent.labels(queue).inc()
        if outcome not in ("sent", "skipped"):
            self._failed.labels(queue, outcome).inc()
        if retried:
            self._retried.labels(queue).inc()
        if dead:
            self._dead.labels(queue).inc()

    def record_relay(self, relay: str, result: str) -> None:
        """Count one send over `relay` that ended `result` (sent, failed or unavailable)."""
        self.relay_sends[relay, result] += 1
        if self._registry is not None:
            self._relay_sends.labels(self.queue, relay, result).inc()

    def relay_report(self, states: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Each relay's state (`states`) and its sends by result, for the heartbeat."""
        report: dict[str, dict[str, Any]] = {name: {"state": s} for name, s in states.items()}
        for (relay, result), count in self.relay_sends.items():
            report.setdefault(relay, {"state": "unknown"})[result] = count
        return report

    def observe_rate(self, limit: float, effective: float) -> None:
        """The configured and effective shared rate (a no-op without Prometheus)."""
        if self._registry is not None:
            self._rate.labels(self.queue, "limit").set(limit)
            self._rate.labels(self.queue, "effective").set(effective)

    def observe_quota(self, quota: int, used: int) -> None:
        """The rolling quota and its use (a no-op without Prometheus)."""
        if self._registry is not None:
            self._quota.labels(self.queue, "limit").set(quota)
            self._quota.labels(self.queue, "used").set(used)

    def observe_relay_rate(self, relay: str, limit: float, effective: float) -> None:
        """A relay's configured and effective own rate (a no-op without Prometheus)."""
        if self._registry is not None:
            self._relay_rate.labels(self.queue, relay, "limit").set(limit)
            self._relay_rate.labels(self.queue, relay, "effective").set(effective)

    def observe_relay_quota(self, relay: str, quota: int, used: int) -> None:
        """A relay's own rolling quota and its use (a no-op without Prometheus)."""
        if self._registry is not None:
            self._relay_quota.labels(self.queue, relay, "limit").set(quota)
            self._relay_quota.labels(self.queue, relay, "used").set(used)

    def observe_domain(self, domain: str, per_second: float, next_free_s: float) -> None:
        """A limited domain's rate and next free slot (a no-op without Prometheus)."""
        if self._registry is not None:
            self._domain.labels(self.queue, domain, "per_second").set(per_second)
            self._domain.labels(self.queue, domain, "next_free_seconds").set(next_free_s)

    def observe_queue(
        self,
        sizes: QueueSizes,
        *,
        pending: int,
        lag: int | None,
        smtp: dict[str, int],
        paused: bool,
        relays: dict[str, dict[str, Any]],
    ) -> None:
        """Refresh the gauges (a no-op without Prometheus)."""
        if self._registry is None:
            return
        values = {
            "backlog": sizes.stream,
            "pending": pending,
            "lag": lag,
            "delayed": sizes.delayed,
            "dead_letters": sizes.dead,
        }
        for name, value in values.items():
            if value is not None:
                self._queue[name].labels(self.queue).set(value)
        for lane, count in (sizes.lanes or {}).items():
            self._lanes.labels(self.queue, lane).set(count)
        for state, count in smtp.items():
            self._smtp.labels(self.queue, state).set(count)
        self._paused.labels(self.queue).set(1 if paused else 0)
        for relay, report in relays.items():
            self._relay_up.labels(self.queue, relay).set(1 if report["state"] == "up" else 0)
