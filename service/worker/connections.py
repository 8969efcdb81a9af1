"""How many SMTP connections the pool keeps: grown on demand, held where the server pushes
back, shrunk when idle (pure decisions, no I/O; the pool in `smtp.py` applies them).

Behind a network most of a send is waiting for replies, so throughput grows with the number of
connections until the server or the CPU is the bound. The pool opens a connection whenever a
send finds none idle, up to `WORKER_CONCURRENCY`. A server that takes no more sessions says so
on a new one (a 421 greeting, "too many connections", or a connection dropped at once) while
the sessions it already has keep working: the pool then holds at the number it has for
`HOLD_SECONDS` rather than pausing the worker. After that it grows again one connection at a
time (each one the server takes lets the next be tried), so a server at its limit sees one
refused session a minute, not a burst. Connections idle
for `IDLE_CLOSE_SECONDS` are closed, the least recently used first (the pool reuses the most
recent one, so a light load keeps few open).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HOLD_SECONDS",
    "IDLE_CLOSE_SECONDS",
    "Hold",
    "connection_limit",
    "hold_after_opening",
    "hold_after_refusal",
    "idle_to_close",
    "should_open",
]

# How long the pool stays at the number of connections the server took before trying one more.
HOLD_SECONDS: Final = 60.0
# How long a connection may sit idle before the pool closes it.
IDLE_CLOSE_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Hold:
    """The server took `connections` sessions and refused one more; stay there until `until`
    (monotonic seconds)."""

    connections: int
    until: float


def connection_limit(cap: int, hold: Hold | None, now: float) -> int:
    """The connections the pool may have open at `now` (also the sends the worker starts)."""
    if hold is None:
        return cap
    held = max(1, min(cap, hold.connections))
    return held if now < hold.until else min(cap, held + 1)


def should_open(*, idle: int, open_now: int, limit: int) -> bool:
    """Whether a send that wants a connection opens a new one (else it waits for one)."""
    return idle == 0 and open_now < limit


def hold_after_refusal(open_now: int, now: float) -> Hold | None:
    """The hold after the server refused a new session that pushes back (see the module),
    with `open_now` connections still open; None when none is: the server is unusable."""
    if open_now <= 0:
        return None
    return Hold(open_now, now + HOLD_SECONDS)


def hold_after_opening(hold: Hold | None, open_now: int, cap: int, now: float) -> Hold | None:
    """The hold after a new session opened, `open_now` connections in all: past a hold's end,
    the ceiling rises to what the server took (one more may be tried at once); gone at `cap`."""
    if hold is None or now < hold.until:
        return hold
    return None if open_now >= cap else Hold(open_now, now)


def idle_to_close(
    last_used: Sequence[float], now: float, *, keep_seconds: float = IDLE_CLOSE_SECONDS
) -> int:
    """How many idle connections to close: those idle `keep_seconds` or more (`last_used`:
    when each came back, monotonic, oldest first)."""
    return sum(1 for used in last_used if now - used >= keep_seconds)
