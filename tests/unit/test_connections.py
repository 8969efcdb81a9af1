"""How many SMTP connections the pool keeps: grow, hold, shrink (pure decisions as tables)."""

from __future__ import annotations

import pytest

from service.worker.connections import (
    HOLD_SECONDS,
    IDLE_CLOSE_SECONDS,
    Hold,
    connection_limit,
    hold_after_opening,
    hold_after_refusal,
    idle_to_close,
    should_open,
)


@pytest.mark.parametrize(
    ("cap", "hold", "now", "limit"),
    [
        (100, None, 0.0, 100),  # nothing refused: up to the cap
        (100, Hold(3, until=60.0), 10.0, 3),  # held at what the server took
        (100, Hold(3, until=60.0), 60.0, 4),  # the hold is over: try one more, not a burst
        (2, Hold(3, until=60.0), 10.0, 2),  # never above the cap
        (4, Hold(4, until=60.0), 60.0, 4),  # not even past a hold
        (100, Hold(0, until=60.0), 10.0, 1),  # never below one
    ],
)
def test_connection_limit(cap: int, hold: Hold | None, now: float, limit: int) -> None:
    assert connection_limit(cap, hold, now) == limit


@pytest.mark.parametrize(
    ("idle", "open_now", "limit", "opens"),
    [
        (0, 0, 100, True),  # the first send
        (0, 10, 100, True),  # work waiting, every connection busy: grow
        (1, 10, 100, False),  # one is free: reuse it
        (0, 3, 3, False),  # at the limit (held or the cap): wait for one
        (0, 4, 3, False),  # above a new hold: wait
    ],
)
def test_should_open(idle: int, open_now: int, limit: int, opens: bool) -> None:
    assert should_open(idle=idle, open_now=open_now, limit=limit) is opens


@pytest.mark.parametrize(
    ("open_now", "hold"),
    [
        (0, None),  # no session works at all: the server is unavailable, the worker pauses
        (1, Hold(1, 10.0 + HOLD_SECONDS)),
        (3, Hold(3, 10.0 + HOLD_SECONDS)),
    ],
)
def test_hold_after_refusal(open_now: int, hold: Hold | None) -> None:
    assert hold_after_refusal(open_now, now=10.0) == hold


@pytest.mark.parametrize(
    ("hold", "open_now", "now", "after"),
    [
        (None, 5, 10.0, None),  # never held: nothing to track
        (Hold(3, until=60.0), 3, 10.0, Hold(3, until=60.0)),  # held: a replacement changes nothing
        (Hold(3, until=60.0), 4, 60.0, Hold(4, until=60.0)),  # past it: taken, so one more next
        (Hold(99, until=60.0), 100, 70.0, None),  # back at the cap: the hold is over
    ],
)
def test_hold_after_opening(
    hold: Hold | None, open_now: int, now: float, after: Hold | None
) -> None:
    assert hold_after_opening(hold, open_now, cap=100, now=now) == after


@pytest.mark.parametrize(
    ("last_used", "now", "close"),
    [
        ([], 100.0, 0),
        ([99.0, 99.5], 100.0, 0),  # busy a moment ago: kept
        ([100.0 - IDLE_CLOSE_SECONDS, 99.0], 100.0, 1),  # the oldest reached the limit
        ([0.0, 1.0, 2.0], 100.0, 3),  # everything idle: all closed
    ],
)
def test_idle_to_close(last_used: list[float], now: float, close: int) -> None:
    assert idle_to_close(last_used, now) == close
