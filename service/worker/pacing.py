"""Pacing the worker to the queue's shared limits (SMTP_RATE_LIMIT, SMTP_DAILY_QUOTA).

The limiter lives in Redis (`store/limiter.py`) and gives every entry a slot. The worker reads
only what the limiter lets start within a short horizon, asks for the slots of what it read in
one call, in stream order, and each delivery sleeps until its slot: a wait uses no attempt, no
Redis call and no CPU. When the limiter has nothing to give (the quota is used up, or the slots
are taken further ahead than the horizon), the reader sleeps for as long as the limiter says,
asking again at least every `_RECHECK_SECONDS` without reading anything. A stop request ends
every wait at once: a delivery still waiting for its slot puts its entry back (`fate.hold`).

With SMTP_DOMAIN_LIMITS, an entry to a limited domain first takes its slot in that domain's
line (`store/domains.py`) before the shared limiter is asked: one whose domain slot is further
than the horizon is set aside (put back as a copy due just before its slot, using no attempt
and no shared slot) while the entries to other domains go on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import structlog

from ..errors import WireFormatError
from ..settings import WorkerSettings
from ..store import Entry, QueueStore
from ..store.domains import DomainSlot
from ..store.limiter import Acquired, LimiterConfig
from ..task import distinct_addresses
from ..wire import decode_entry
from .backoff import retry_while_unavailable
from .domains import DomainLines
from .metrics import WorkerMetrics
from .relay_limits import HORIZON_S
from .relays import RelaySet

__all__ = [
    "SET_ASIDE_LEAD_SECONDS",
    "Admission",
    "Pacer",
    "entry_cost",
    "limiter_config",
]

log = structlog.get_logger("service.worker")

# While the limiter says wait longer than this, it is asked again this often (the effective
# rate climbs back, the quota's window moves, another worker's settings may differ).
_RECHECK_SECONDS: Final = 5.0
# A set-aside entry's copy is due this long before its domain slot (within the horizon): read
# again a little before its slot, it waits for it; later, it goes at once.
SET_ASIDE_LEAD_SECONDS: Final = HORIZON_S / 2


def limiter_config(settings: WorkerSettings) -> LimiterConfig:
    """The limits the settings describe."""
    rate = settings.rate_limit
    return LimiterConfig(
        per_second=rate.per_second if rate else None,
        burst=settings.smtp_rate_burst,
        quota=settings.smtp_daily_quota,
        quota_window_s=settings.smtp_daily_quota_window_seconds,
    )


def entry_cost(entry: Entry, *, per_recipient: bool) -> int:
    """What an entry costs against the limits: 1, or with `per_recipient` (SMTP_RATE_COST=
    recipient) its distinct envelope recipients; 0 for an entry that cannot be decoded (it is
    dead-lettered without being sent)."""
    if not per_recipient:
        return 1
    try:
        queued = decode_entry(entry.fields)
    except WireFormatError:
        return 0
    return max(1, len(distinct_addresses(queued.envelope_recipients())))


@dataclass(frozen=True, slots=True)
class Admission:
    """When one entry may be sent: at `not_before` (monotonic), or not now (`refused`: the
    quota has no room; it has in `reopen_s`; `set_aside`: its domain's slot is `reopen_s`
    away, for `reason`)."""

    not_before: float
    refused: bool = False
    reopen_s: float = 0.0
    set_aside: bool = False
    reason: str = ""


class Pacer:
    """One worker's side of the shared limiter; inactive (every method a no-op) without limits."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: QueueStore,
        metrics: WorkerMetrics,
        *,
        stopping: asyncio.Event,
        relays: RelaySet | None = None,
    ) -> None:
        self.config = limiter_config(settings)
        self._relays = relays  # their own limits gate intake too (`RelaySet.wait_to_read`)
        self._domains = DomainLines(settings, store, metrics, horizon_s=HORIZON_S)
        self._store = store
        self._metrics = metrics
        self._stopping = stopping
        self._per_recipient = settings.smtp_rate_cost == "recipient"
        self._ready: int | None = None  # what the last answer said the next read may take
        self._wait_until = 0.0  # monotonic: no read before this
        self._quota_full = False

    @property
    def active(self) -> bool:
        """Whether any limit is configured."""
        return self.config.active or self._domains.active

    @property
    def adaptive(self) -> bool:
        """Whether "slow down" replies lower the shared rate (a rate limit is configured)."""
        return self.config.per_second is not None

    async def wait_to_read(self, free: int) -> int:
        """Sleep until the limiters let an entry start soon (the queue's, then the relays'
        own); how many of `free` to read."""
        free = await self._shared_wait_to_read(free)
        return await self._relays.wait_to_read(free) if self._relays is not None else free

    async def _shared_wait_to_read(self, free: int) -> int:
        if not self.config.active:
            return free
        waited = False
        while (remaining := self._wait_until - time.monotonic()) > 0:
            waited = True
            await asyncio.sleep(min(remaining, _RECHECK_SECONDS))
            if time.monotonic() < self._wait_until:
                await self._ask([])
        if self._ready is None:
            return min(free, self.config.burst)
        return min(free, 1 if waited else max(self._ready, 1))

    async def admit(self, entries: list[Entry]) -> list[Admission | None]:
        """The slot of each entry, in order (None for all without limits).

        With domain limits, an entry to a limited domain takes its place in the domain's line
        first: one set aside takes no shared slot. The others take their shared slots, then
        their domains' send slots from those on.
        """
        if not self.active or not entries:
            return [None] * len(entries)
        limited = [self._domains.limited(entry) for entry in entries]
        plan = await self._domains.plan([(task, domains) for task, domains in limited if domains])
        planned_at = time.monotonic()  # after the answer: its delays are counted from no later
        planned = [next(plan) if domains else None for _, domains in limited]
        going = [i for i, slot in enumerate(planned) if slot is None or not slot.set_aside]
        shared = dict(
            zip(going, await self._shared_slots([entries[i] for i in going]), strict=True)
        )
        now = time.monotonic()
        committing = [i for i in going if limited[i][1] and not shared[i].refused]
        # Each no earlier than its shared slot, nor than the place PLAN gave it.
        asked = [
            (
                limited[i][0],
                max(0.0, self._not_before(shared[i], planned[i], planned_at) - now),
                limited[i][1],
            )
            for i in committing
        ]
        commit = await self._domains.commit(asked)
        now = time.monotonic()
        final = {i: next(commit) for i in committing}
        admissions: list[Admission | None] = []
        for i, (_, domains) in enumerate(limited):
            slot = final.get(i, planned[i])
            if slot is not None and slot.set_aside:
                reason = f"waiting for the domain limit of {', '.join(domains)}"
                admissions.append(
                    Admission(now, set_aside=True, reopen_s=slot.delay_s, reason=reason)
                )
            elif i in final and slot is not None:
                admissions.append(Admission(now + slot.delay_s))
            else:
                admissions.append(shared[i])
        self._domains.observe(limited, [final.get(i, planned[i]) for i in range(len(entries))])
        return admissions

    @staticmethod
    def _not_before(shared: Admission, planned: DomainSlot | None, planned_at: float) -> float:
        """The later of an entry's shared slot and its planned place (monotonic)."""
        return max(shared.not_before, planned_at + (planned.delay_s if planned else 0.0))

    async def _shared_slots(self, entries: list[Entry]) -> list[Admission]:
        """The shared limiter's slots of `entries` (now, without SMTP_RATE_LIMIT or a quota)."""
        now = time.monotonic()
        if not self.config.active:
            return [Admission(now)] * len(entries)
        if not entries:
            return []
        acquired = await self._ask(
            [entry_cost(e, per_recipient=self._per_recipient) for e in entries]
        )
        now = time.monotonic()
        return [
            Admission(now, refused=True, reopen_s=acquired.reopen_s)
            if delay is None
            else Admission(now + delay)
            for delay in acquired.delays_s
        ]

    async def wait_turn(self, admission: Admission) -> bool:
        """Sleep until the entry's slot; False if a stop was requested first."""
        if self._stopping.is_set():
            return False
        delay = admission.not_before - time.monotonic()
        if delay <= 0:
            return True
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def slow_down(self, reason: str) -> None:
        """The SMTP server asked to slow down: lower the shared rate (once per calm period)."""
        limit = self.config.per_second
        if limit is None:
            return
        throttled = await retry_while_unavailable("throttle", lambda: self._store.throttle(limit))
        self._metrics.observe_rate(limit, throttled.per_second)
        if throttled.lowered:
            log.warning(
                "send_rate_lowered",
                per_second=round(throttled.per_second, 3),
                limit_per_second=limit,
                reason=reason,
            )

    async def _ask(self, costs: list[int]) -> Acquired:
        acquired = await retry_while_unavailable(
            "acquire_slots",
            lambda: self._store.acquire_slots(self.config, costs, horizon_s=HORIZON_S),
        )
        self._ready = acquired.ready
        self._wait_until = time.monotonic() + acquired.wait_s if acquired.ready == 0 else 0.0
        limit = self.config.per_second
        if limit is not None and acquired.per_second is not None:
            self._metrics.observe_rate(limit, acquired.per_second)
            if acquired.raised:
                log.info(
                    "send_rate_raised",
                    per_second=round(acquired.per_second, 3),
                    limit_per_second=limit,
                )
        self._note_quota(acquired)
        return acquired

    def _note_quota(self, acquired: Acquired) -> None:
        quota = self.config.quota
        if quota is None:
            return
        self._metrics.observe_quota(quota, acquired.quota_used)
        full = acquired.quota_used >= quota or any(d is None for d in acquired.delays_s)
        if full and not self._quota_full:
            log.warning(
                "send_quota_reached",
                quota=quota,
                used=acquired.quota_used,
                window_s=self.config.quota_window_s,
                reopens_in_s=round(acquired.reopen_s or acquired.wait_s, 1),
            )
        elif self._quota_full and not full:
            log.info("send_quota_available", quota=quota, used=acquired.quota_used)
        self._quota_full = full
