"""Each relay's own limits (`rate_limit`, `daily_quota` in SMTP_RELAYS_FILE), one worker's side.

Every relay with limits has its own limiter in Redis: the queue's GCRA and rolling quota
(`store/limiter.py`) on keys named after the relay, in the queue's hash tag, so every worker
shares it exactly, on Redis's clock. A send takes its relay's slot just before it goes
(`take`) and sleeps until it (no Redis call, no CPU). A relay that allows `overflow` is at
its limit when its slot is further than `HORIZON_S`: the send then goes to the next relay, and
the slot stays free. Otherwise the send waits, up to `longest_wait_s` (the entry stays pending
meanwhile, well below the reclaim delay); a slot further away, or past the quota, is not
taken, and the entry is put back unsent, due when the slot comes, without using an attempt
(`relays.Held`).

Intake follows the same answers (`read_allowance`): the worker reads only as many entries as
the relays that would carry them can start within `HORIZON_S`, and none while they are full,
as `pacing.py` does for the queue's limits: waits stay short and entries are seldom put back.

A "slow down" reply from a relay with a rate of its own lowers that relay's effective rate
only (THROTTLE on its keys); the others keep theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from redis.exceptions import RedisError

from ..relay_config import RelayConfig
from ..store import QueueStore
from ..store.limiter import Acquired, LimiterConfig
from .backoff import retry_while_unavailable
from .metrics import WorkerMetrics

__all__ = [
    "HORIZON_S",
    "LONGEST_WAIT_S",
    "RelayGate",
    "RelayLimits",
    "RelaySlot",
    "longest_wait_s",
    "read_allowance",
    "relay_limiter_config",
]

log = structlog.get_logger("service.worker")

# A send waits at most this long for its relay's slot while its entry is pending; a slot
# further away puts the entry back until then (it keeps no place: put back often, entries
# would compete for slots, so intake, not this, is what keeps waits short).
LONGEST_WAIT_S: Final = 10.0
# Entries are read only when their slots (the queue's, their domain's, their relay's) are at most
# this far ahead: a read entry waits for its slot while pending, and the shorter that wait the
# less a stop or a crash delays it. A relay whose slot is further away is "at its limit" for a
# send that may overflow to the next relay. (Here rather than in pacing.py, which imports this.)
HORIZON_S: Final = 0.1


def longest_wait_s(*, timeout_s: float, reclaim_s: float) -> float:
    """How long a send may wait for its relay's slot: `LONGEST_WAIT_S`, shortened so that the
    wait and a whole send (`timeout_s`) end well before another worker may take the entry over
    (`reclaim_s`, always above `timeout_s`): else it could be sent twice."""
    return min(LONGEST_WAIT_S, (reclaim_s - timeout_s) / 2)


def relay_limiter_config(relay: RelayConfig) -> LimiterConfig | None:
    """The relay's own limits as the limiter takes them; None without any."""
    if not relay.limited:
        return None
    rate = relay.rate
    return LimiterConfig(
        per_second=rate.per_second if rate else None,
        burst=relay.rate_burst,
        quota=relay.daily_quota,
        quota_window_s=relay.daily_quota_window_seconds,
    )


@dataclass(frozen=True, slots=True)
class RelaySlot:
    """A relay's answer for one send: go at `not_before` (monotonic), or not now (`refused`:
    its slot is `reopen_s` away)."""

    not_before: float
    refused: bool = False
    reopen_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RelayGate:
    """What the last answer of a relay's limiter said the next read may take: `ready` sends
    within the longest wait (None: not asked yet), none before `wait_until` (monotonic)."""

    ready: int | None
    wait_until: float = 0.0
    overflow: bool = False
    burst: int = 1  # what it may take before it was asked


def read_allowance(
    gates: Sequence[RelayGate | None], *, mode: str, now: float
) -> tuple[int | None, float]:
    """How many entries the next read may take (None: no relay limit applies) and how long
    to wait first, for the usable relays that take any sender, in the file's order (`None`:
    a relay without limits of its own).

    `failover`: the first relay carries the mail, and the next ones only as far as the one
    before allows overflow. `weighted`: any of them may be drawn. A relay without limits
    among them lifts the limit; one not asked yet may take its burst; one whose wait has
    passed, one (its next answer says more).
    """
    carrying: list[RelayGate | None] = []
    for gate in gates:
        carrying.append(gate)
        if mode != "weighted" and (gate is None or not gate.overflow):
            break
    if not carrying or any(gate is None for gate in carrying):
        return None, 0.0
    ready, waits = 0, []
    for gate in carrying:
        assert gate is not None  # noqa: S101 - checked above; for mypy
        if gate.ready is None:
            ready += gate.burst
        elif gate.ready > 0:
            ready += gate.ready
        elif gate.wait_until <= now:
            ready += 1
        else:
            waits.append(gate.wait_until - now)
    if ready > 0:
        return ready, 0.0
    return 0, min(waits)


class _State:
    """One relay's limiter, as this worker last heard from it."""

    def __init__(self, name: str, config: LimiterConfig, overflow: bool) -> None:
        self.name = name
        self.config = config
        self.overflow = overflow
        self.ready: int | None = None
        self.wait_until = 0.0
        self.full = False


class RelayLimits:
    """The relays' own limiters, as one worker takes slots from them; inactive (every relay
    unlimited) when no relay sets a limit."""

    def __init__(
        self,
        relays: Sequence[RelayConfig],
        store: QueueStore,
        metrics: WorkerMetrics,
        *,
        per_recipient: bool,
        longest_wait_s: float,
        stopping: asyncio.Event,
    ) -> None:
        self._states = {
            relay.name: _State(relay.name, config, relay.overflow)
            for relay in relays
            if (config := relay_limiter_config(relay)) is not None
        }
        self._store = store
        self._metrics = metrics
        self._per_recipient = per_recipient
        self._longest_wait_s = longest_wait_s
        self._stopping = stopping
        self._announced = False

    @property
    def active(self) -> bool:
        """Whether any relay has limits of its own."""
        return bool(self._states)

    def limited(self, relay: str) -> bool:
        """Whether `relay` has limits of its own."""
        return relay in self._states

    def adaptive(self, relay: str) -> bool:
        """Whether "slow down" replies from `relay` lower its own rate (it has one)."""
        state = self._states.get(relay)
        return state is not None and state.config.per_second is not None

    def gate(self, relay: str) -> RelayGate | None:
        """What the next read may take for `relay` (None: no limits of its own)."""
        state = self._states.get(relay)
        if state is None:
            return None
        return RelayGate(state.ready, state.wait_until, state.overflow, state.config.burst)

    def cost(self, recipients: Sequence[str]) -> int:
        """What a send costs against a relay's limits (SMTP_RATE_COST, as for the queue's)."""
        return (
            max(1, len({address.lower() for address in recipients})) if self._per_recipient else 1
        )

    async def take(self, relay: str, cost: int, *, overflow: bool) -> RelaySlot:
        """`relay`'s slot for one send costing `cost`: within the longest wait (within
        `HORIZON_S` for a send that may `overflow` to the next relay), or refused."""
        state = self._states[relay]
        longest = min(HORIZON_S, self._longest_wait_s) if overflow else self._longest_wait_s
        await self._announce()
        acquired = await retry_while_unavailable(
            "acquire_relay_slot",
            lambda: self._store.acquire_slots(
                state.config,
                [cost],
                horizon_s=min(HORIZON_S, self._longest_wait_s),
                longest_wait_s=longest,
                relay=relay,
            ),
        )
        now = time.monotonic()
        self._note(state, acquired, now)
        delay = acquired.delays_s[0]
        if delay is None:
            return RelaySlot(now, refused=True, reopen_s=acquired.reopen_s)
        return RelaySlot(now + delay)

    async def wait(self, slot: RelaySlot) -> bool:
        """Sleep until the slot; False if a stop was requested first."""
        if self._stopping.is_set():
            return False
        delay = slot.not_before - time.monotonic()
        if delay <= 0:
            return True
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def slow_down(self, relay: str, reason: str) -> None:
        """`relay` asked to slow down: lower its own rate (once per calm period)."""
        limit = self._states[relay].config.per_second
        if limit is None:
            return
        throttled = await retry_while_unavailable(
            "throttle_relay", lambda: self._store.throttle(limit, relay=relay)
        )
        self._metrics.observe_relay_rate(relay, limit, throttled.per_second)
        if throttled.lowered:
            log.warning(
                "relay_rate_lowered",
                relay=relay,
                per_second=round(throttled.per_second, 3),
                limit_per_second=limit,
                reason=reason,
            )

    async def _announce(self) -> None:
        """Name the limited relays for `admin stats`, until it once goes through. Best effort:
        at maxmemory Redis refuses the write, and sending must not wait for it (ACQUIRE itself
        goes through, and settling is what frees memory)."""
        if self._announced:
            return
        try:
            await self._store.announce_relay_limits(list(self._states))
        except RedisError as exc:
            log.debug("relay_limits_not_announced", error=type(exc).__name__)
            return
        self._announced = True

    def _note(self, state: _State, acquired: Acquired, now: float) -> None:
        """Remember what the answer says of the next read; metrics; the quota's log lines."""
        state.ready = acquired.ready
        state.wait_until = now + acquired.wait_s if acquired.ready == 0 else 0.0
        config = state.config
        if config.per_second is not None and acquired.per_second is not None:
            self._metrics.observe_relay_rate(state.name, config.per_second, acquired.per_second)
        if config.quota is None:
            return
        self._metrics.observe_relay_quota(state.name, config.quota, acquired.quota_used)
        full = acquired.quota_used >= config.quota
        if full and not state.full:
            log.warning(
                "relay_quota_reached",
                relay=state.name,
                quota=config.quota,
                used=acquired.quota_used,
                reopens_in_s=round(acquired.reopen_s or acquired.wait_s, 1),
            )
        elif state.full and not full:
            log.info("relay_quota_available", relay=state.name, quota=config.quota)
        state.full = full
