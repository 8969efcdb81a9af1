"""Sending through several SMTP relays: pick one per email, skip the unusable, probe them back.

Each relay (`service/relay_config.py`) has its own connection pool (`SmtpPool`) and its own
breaker state. An email goes to the relays that accept its sender's domain, in the order
`try_order` gives: the file's order in `failover` mode, a pick by weight first in `weighted`
mode. A relay that cannot open a session (down, refusing connections, TLS or AUTH failing) is
marked down on the spot and the same email goes on to the next relay at once: no MAIL FROM
was sent, so nothing can be duplicated and no attempt is used. A down relay is probed in the
background (a session opened and closed, as the breaker does) with growing delays, 1 s first,
and takes mail again once a probe passes.

Only when every relay that could carry an email is down does the send come back
`UNAVAILABLE`, and the worker's breaker pauses intake as with one relay; its probe
(`RelaySet.probe`) passes as soon as any relay opens a session. With one relay (the `SMTP_*`
settings) that breaker is the only one, exactly as without this module.

A relay with limits of its own (`relay_limits.py`) is not down when it is at its limit: the
send waits for its slot there, or goes on to the next relay in order if the relay allows
`overflow`; with no relay able to take it soon, it comes back `Held` (put back unsent, no
attempt used, due when the slot comes).

A send that breaks after MAIL FROM (the relay dies mid-transaction) is not moved to another
relay: the server may have taken the message, so it is retried as any broken send is
(RFC 1047's window; see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from ..errors import SmtpUnavailableError
from ..relay_config import RelayConfig
from ..settings import WorkerSettings
from ..store import SettleWrite
from .backoff import backoff_delay
from .outcome import Decision
from .relay_limits import RelayLimits, read_allowance
from .render import Outgoing
from .smtp import SmtpPool
from .smtp_result import FailureKind, SendFailure, SendResult

__all__ = [
    "Held",
    "RelaySet",
    "RelayView",
    "Routed",
    "decision_via",
    "may_try_next",
    "pool_capacity",
    "sender_domain",
    "try_order",
    "write_via",
]

log = structlog.get_logger("service.worker")

_FIRST_PROBE_SECONDS: Final = 1.0
_MAX_PROBE_SECONDS: Final = 30.0
# While the relays are full, intake looks again this often (a relay may go down or come up).
_MAX_READ_WAIT_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class RelayView:
    """What the choice of a relay reads of one: is it usable, its weight, whom it accepts."""

    up: bool
    weight: int = 1
    from_domains: tuple[str, ...] = ()

    def accepts(self, domain: str) -> bool:
        """Whether the relay takes senders of `domain` (no list: every domain)."""
        return not self.from_domains or domain in self.from_domains


@dataclass(frozen=True, slots=True)
class Routed:
    """A send's result and the relay that gave it (None: no relay was tried)."""

    result: SendResult
    relay: str | None


@dataclass(frozen=True, slots=True)
class Held:
    """No relay takes the send now: `relay` is at its limit, with a slot `reopen_s` away (0:
    the worker is stopping); the entry goes back unsent, without using an attempt."""

    relay: str
    reopen_s: float
    reason: str


def sender_domain(mail_from: str) -> str:
    """The domain of an envelope sender, lower case ("" for the null sender `<>`)."""
    return mail_from.rpartition("@")[2].lower() if "@" in mail_from else ""


def try_order(relays: Sequence[RelayView], *, mode: str, domain: str, pick: float) -> list[int]:
    """The relays (indices) an email from `domain` tries, in order; down ones left out.

    `failover`: the configured order. `weighted`: one relay drawn by weight (`pick`, 0 to 1,
    says where the draw falls), then the others in the configured order.
    """
    usable = [i for i, relay in enumerate(relays) if relay.up and relay.accepts(domain)]
    if mode != "weighted" or len(usable) < 2:
        return usable
    total = sum(relays[i].weight for i in usable)
    point = pick * total
    for i in usable:
        point -= relays[i].weight
        if point < 0:
            return [i, *(j for j in usable if j != i)]
    return usable  # pick == 1.0 (or rounding): the configured order


def pool_capacity(mode: str, capacities: Sequence[int | None]) -> int:
    """How many sends the relays can carry at once (`capacities`: each relay's, None if down).

    In failover mode the first usable relay carries everything; weighted relays add up. With
    every relay down, 1: that send finds no relay at once and the worker's breaker pauses.
    """
    usable = [c for c in capacities if c is not None]
    if not usable:
        return 1
    return usable[0] if mode != "weighted" else sum(usable)


def may_try_next(elapsed_s: float, *, timeout_s: float, reclaim_s: float) -> bool:
    """Whether a send that found relays unusable for `elapsed_s` tries the next one now.

    Only if a whole send there (`timeout_s`) still ends before another worker may take the
    entry over (`reclaim_s`): else it could be sent twice. A refused connection costs
    milliseconds; a relay that hangs costs the whole timeout, and the email then goes back
    without using an attempt (the worker pauses until its probe, which passes at once while
    another relay is up) and tries the next relay on its next delivery.
    """
    return elapsed_s + timeout_s < reclaim_s


def decision_via(decision: Decision, relay: str) -> Decision:
    """`decision` with its reasons naming the relay (they go to the status and dead letters)."""
    return dataclasses.replace(
        decision,
        reason=f"{decision.reason} (relay {relay})" if decision.reason else "",
        dead_reason=f"{decision.dead_reason} (relay {relay})" if decision.dead_reason else "",
    )


def write_via(write: SettleWrite, relay: str) -> SettleWrite:
    """`write` with a sent status that says which relay took the email (after its reply)."""
    status = write.status
    if status is None or status.state != "sent":
        return write
    text = f"{status.text} (relay {relay})" if status.text else f"relay {relay}"
    return dataclasses.replace(write, status=dataclasses.replace(status, text=text))


class _Relay:
    """One relay's pool and whether it is usable now."""

    def __init__(self, config: RelayConfig, pool: SmtpPool) -> None:
        self.config = config
        self.pool = pool
        self.down_reason: str | None = None
        self.failures = 0
        self.probing: asyncio.Task[None] | None = None

    def view(self) -> RelayView:
        return RelayView(self.down_reason is None, self.config.weight, self.config.from_domains)


class RelaySet:
    """The worker's relays: `send` as `SmtpPool.send`, over whichever relay can take it."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        local_hostname: str,
        pick: Callable[[], float] = random.random,
        limits: RelayLimits | None = None,
    ) -> None:
        self._mode = settings.relay_mode
        self._pick = pick  # where a weighted draw falls: 0 to 1
        self._timeout_s = settings.smtp_timeout_seconds
        self._reclaim_s = settings.worker_reclaim_idle_seconds
        self._relays = [
            _Relay(config, _pool(settings, config, local_hostname)) for config in settings.relays
        ]
        self.limits = limits if limits is not None and limits.active else None

    @property
    def several(self) -> bool:
        """Whether there is more than one relay (reasons and statuses then name the one used)."""
        return len(self._relays) > 1

    @property
    def capacity(self) -> int:
        """Sends the usable relays can carry at once (see `pool_capacity`)."""
        return pool_capacity(
            self._mode, [r.pool.capacity if r.down_reason is None else None for r in self._relays]
        )

    @property
    def idle_connections(self) -> int:
        """Connections open and waiting for a message, over every relay."""
        return sum(relay.pool.idle_connections for relay in self._relays)

    def states(self) -> dict[str, str]:
        """Each relay's name and state: up or down."""
        return {r.config.name: "up" if r.down_reason is None else "down" for r in self._relays}

    async def wait_to_read(self, free: int) -> int:
        """Sleep while the relays that would carry the next entries are at their own limits;
        how many of `free` to read (see `relay_limits.read_allowance`)."""
        if self.limits is None:
            return free
        while True:
            gates = [
                self.limits.gate(r.config.name)
                for r in self._relays
                if r.down_reason is None and not r.config.from_domains
            ]
            allowed, wait = read_allowance(gates, mode=self._mode, now=time.monotonic())
            if allowed is None:
                return free
            if allowed > 0:
                return min(free, allowed)
            await asyncio.sleep(min(wait, _MAX_READ_WAIT_SECONDS))

    async def send(self, outgoing: Outgoing) -> Routed | Held:
        """Send over the first relay in `try_order` that opens a session (and has a slot);
        say how it went."""
        domain = sender_domain(outgoing.mail_from)
        views = [relay.view() for relay in self._relays]
        order = try_order(views, mode=self._mode, domain=domain, pick=self._pick())
        if not order:
            return Routed(self._no_relay(domain), None)
        last: Routed | None = None
        held: Held | None = None
        started = time.monotonic()
        for position, index in enumerate(order):
            relay = self._relays[index]
            if relay.down_reason is not None:  # went down while an earlier relay was tried
                continue
            elapsed = time.monotonic() - started
            if last is not None and not may_try_next(
                elapsed, timeout_s=self._timeout_s, reclaim_s=self._reclaim_s
            ):
                return last
            if self.limits is not None and self.limits.limited(relay.config.name):
                overflow = relay.config.overflow and position + 1 < len(order)
                held = await self._take_slot(relay, outgoing, overflow=overflow)
                if held is not None:
                    if overflow and held.reopen_s:
                        continue  # at its limit, not down: the next relay may take it
                    return held
            result = await relay.pool.send(outgoing)
            last = Routed(result, relay.config.name)
            if not (isinstance(result, SendFailure) and result.kind is FailureKind.UNAVAILABLE):
                return last
            self._mark_down(relay, result.detail)
        return held or last or Routed(self._no_relay(domain), None)

    async def _take_slot(self, relay: _Relay, outgoing: Outgoing, *, overflow: bool) -> Held | None:
        """Wait for the relay's own slot; the `Held` that says why not, if it is not soon."""
        assert self.limits is not None  # noqa: S101 - the caller checked; for mypy
        name = relay.config.name
        cost = self.limits.cost(outgoing.recipients)
        slot = await self.limits.take(name, cost, overflow=overflow)
        if slot.refused:
            return Held(name, slot.reopen_s, f"relay {name} at its limit")
        if not await self.limits.wait(slot):
            return Held(name, 0.0, "worker stopping before the relay's slot")
        return None

    async def slow_down(self, relay: str, reason: str) -> bool:
        """`relay` asked to slow down: lower its own rate; False if it has none (the queue's
        rate is then the one to lower)."""
        if self.limits is None or not self.limits.adaptive(relay):
            return False
        await self.limits.slow_down(relay, reason)
        return True

    def adaptive(self, relay: str | None) -> bool:
        """Whether "slow down" replies from `relay` lower a rate of its own."""
        return relay is not None and self.limits is not None and self.limits.adaptive(relay)

    async def probe(self) -> None:
        """Pass once any relay is usable: one already, or one that opens a session now.

        The worker's breaker calls this while every relay is down.
        """
        if any(relay.down_reason is None for relay in self._relays):
            return
        reasons = []
        for relay in self._relays:
            try:
                await relay.pool.probe()
            except SmtpUnavailableError as exc:
                reasons.append(self._named(relay, exc.reason))
                continue
            self._mark_up(relay)
            return
        raise SmtpUnavailableError("; ".join(reasons))

    async def close(self) -> None:
        """Stop probing and close every relay's connections."""
        probes = [r.probing for r in self._relays if r.probing is not None]
        for probing in probes:
            probing.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await asyncio.gather(*(relay.pool.close() for relay in self._relays))

    def _no_relay(self, domain: str) -> SendFailure:
        accepting = [r for r in self._relays if r.view().accepts(domain)]
        if not accepting:  # no relay will ever take this sender: the email cannot go out
            return SendFailure(FailureKind.UNSUPPORTED, f"no relay accepts senders of {domain!r}")
        reasons = "; ".join(self._named(r, r.down_reason or "down") for r in accepting)
        return SendFailure(FailureKind.UNAVAILABLE, reasons)

    def _named(self, relay: _Relay, reason: str) -> str:
        return reason if len(self._relays) == 1 else f"relay {relay.config.name}: {reason}"

    def _mark_down(self, relay: _Relay, reason: str) -> None:
        if relay.down_reason is not None:
            return
        relay.down_reason = reason
        relay.failures = 0
        if len(self._relays) == 1:
            return  # the worker's breaker pauses and probes it (`probe`)
        log.error("relay_unavailable", relay=relay.config.name, reason=reason)
        relay.probing = asyncio.create_task(self._probe_until_up(relay), name="relay-probe")

    def _mark_up(self, relay: _Relay) -> None:
        if relay.down_reason is None:
            return
        relay.down_reason = None
        if relay.probing is not None and relay.probing is not asyncio.current_task():
            relay.probing.cancel()
        relay.probing = None
        if len(self._relays) > 1:
            log.info("relay_available", relay=relay.config.name, probes=relay.failures + 1)

    async def _probe_until_up(self, relay: _Relay) -> None:
        """Probe a down relay with growing delays until a session opens."""
        while relay.down_reason is not None:
            delay = backoff_delay(
                relay.failures + 1, first=_FIRST_PROBE_SECONDS, cap=_MAX_PROBE_SECONDS
            )
            await asyncio.sleep(delay)
            try:
                await relay.pool.probe()
            except SmtpUnavailableError as exc:
                relay.failures += 1
                log.warning(
                    "relay_probe_failed",
                    relay=relay.config.name,
                    reason=exc.reason,
                    failures=relay.failures,
                )
                continue
            self._mark_up(relay)


def _pool(settings: WorkerSettings, relay: RelayConfig, local_hostname: str) -> SmtpPool:
    """The relay's pool: the pool reads its server from settings, so it gets a copy naming it."""
    own = settings.model_copy(
        update={
            "smtp_host": relay.host,
            "smtp_port": relay.port_or_default,
            "smtp_security": relay.security,
            "smtp_username": relay.username,
            "smtp_password": relay.password,
        }
    )
    size = min(settings.worker_concurrency, relay.max_connections or settings.worker_concurrency)
    return SmtpPool(own, size=size, local_hostname=local_hostname)
