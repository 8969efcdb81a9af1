"""One worker's side of the per-domain limits (SMTP_DOMAIN_LIMITS): which limited domains an
entry is for, and the calls to the two steps of `store/domains.py` around the shared limiter
(`pacing.Pacer.admit` runs them in order)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..errors import WireFormatError
from ..settings import WorkerSettings
from ..store import Entry, QueueStore
from ..store.domains import DomainSlot
from ..wire import QueuedTask, decode_entry
from .backoff import retry_while_unavailable
from .metrics import WorkerMetrics

__all__ = ["DomainLines", "limited_domains"]

# An entry's task id and the limited domains among its recipients (none: it takes no slot).
Limited = tuple[str, tuple[str, ...]]


def limited_domains(queued: QueuedTask, limited: Sequence[str]) -> tuple[str, ...]:
    """The domains of `limited` that the task's envelope recipients are at, in `limited`'s
    order (exact match, lowercase)."""
    at = {address.rpartition("@")[2].lower() for address in queued.envelope_recipients()}
    return tuple(domain for domain in limited if domain in at)


class DomainLines:
    """The lines of the limited domains, as one worker takes places in them; inactive (every
    entry limited by none) without SMTP_DOMAIN_LIMITS."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: QueueStore,
        metrics: WorkerMetrics,
        *,
        horizon_s: float,
    ) -> None:
        self._limits = settings.domain_limits
        self._per_second = {limit.domain: limit.rate.per_second for limit in self._limits}
        self._names = list(self._per_second)
        self._store = store
        self._metrics = metrics
        self._horizon_s = horizon_s
        self._announced = False  # the limits were written to Redis

    @property
    def active(self) -> bool:
        """Whether any domain is limited."""
        return bool(self._limits)

    def limited(self, entry: Entry) -> Limited:
        """The entry's task id and limited domains (none for an undecodable entry: it is
        dead-lettered unsent)."""
        if not self._limits:
            return "", ()
        try:
            queued = decode_entry(entry.fields)
        except WireFormatError:
            return "", ()
        return queued.task_id, limited_domains(queued, self._names)

    async def plan(self, entries: list[Limited]) -> Iterator[DomainSlot]:
        """DOMAIN_PLAN for `entries` (each limited by at least one domain); asked once even
        without such entries, so that `admin stats` shows the limits from the start."""
        if not self._limits or (not entries and self._announced):
            return iter(())
        self._announced = True
        slots = await retry_while_unavailable(
            "plan_domain_slots",
            lambda: self._store.plan_domain_slots(self._limits, entries, horizon_s=self._horizon_s),
        )
        return iter(slots)

    async def commit(
        self, entries: list[tuple[str, float, tuple[str, ...]]]
    ) -> Iterator[DomainSlot]:
        """DOMAIN_COMMIT for `entries` (task id, seconds until its shared slot, domains)."""
        if not entries:
            return iter(())
        slots = await retry_while_unavailable(
            "commit_domain_slots",
            lambda: self._store.commit_domain_slots(
                self._limits, entries, horizon_s=self._horizon_s
            ),
        )
        return iter(slots)

    def observe(self, limited: list[Limited], slots: list[DomainSlot | None]) -> None:
        """The metrics' next free slot of each domain, as a batch's `slots` left it."""
        next_free: dict[str, float] = {}
        for (_, domains), slot in zip(limited, slots, strict=True):
            for domain in domains:
                after = (slot.delay_s if slot else 0.0) + 1 / self._per_second[domain]
                next_free[domain] = max(next_free.get(domain, 0.0), after)
        for domain, seconds in next_free.items():
            self._metrics.observe_domain(domain, self._per_second[domain], seconds)
