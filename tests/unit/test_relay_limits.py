"""The relays' own limits, the pure parts: what a read may take, how long a send may wait."""

from __future__ import annotations

import pytest

from service.relay_config import RelayConfig
from service.worker.relay_limits import (
    RelayGate,
    longest_wait_s,
    read_allowance,
    relay_limiter_config,
)

NOW = 100.0
FULL = RelayGate(ready=0, wait_until=NOW + 0.4)  # at its limit for 0.4 s more
FULL_OVER = RelayGate(ready=0, wait_until=NOW + 0.2, overflow=True)


@pytest.mark.parametrize(
    ("gates", "mode", "expected"),
    [
        ([], "failover", (None, 0.0)),
        ([None], "failover", (None, 0.0)),  # a relay without limits: no limit
        ([RelayGate(ready=5)], "failover", (5, 0.0)),
        ([RelayGate(ready=None, burst=3)], "failover", (3, 0.0)),  # not asked yet: its burst
        ([FULL], "failover", (0, pytest.approx(0.4))),  # full: wait for it
        ([RelayGate(ready=0, wait_until=NOW)], "failover", (1, 0.0)),  # waited: read one
        # Failover without overflow: the first relay alone carries the mail.
        ([FULL, None], "failover", (0, pytest.approx(0.4))),
        ([RelayGate(ready=2), RelayGate(ready=7)], "failover", (2, 0.0)),
        # With overflow the next relay takes the excess: its room counts...
        ([RelayGate(ready=2, overflow=True), RelayGate(ready=7)], "failover", (9, 0.0)),
        ([FULL_OVER, None], "failover", (None, 0.0)),  # ...and one without limits lifts it
        ([FULL_OVER, FULL], "failover", (0, pytest.approx(0.2))),  # the first to reopen
        # Weighted: any relay may be drawn.
        ([FULL, RelayGate(ready=4)], "weighted", (4, 0.0)),
        ([FULL, None], "weighted", (None, 0.0)),
        ([FULL, FULL_OVER], "weighted", (0, pytest.approx(0.2))),
    ],
)
def test_what_a_read_may_take(
    gates: list[RelayGate | None], mode: str, expected: tuple[int | None, float]
) -> None:
    assert read_allowance(gates, mode=mode, now=NOW) == expected


@pytest.mark.parametrize(
    ("timeout_s", "reclaim_s", "expected"),
    [
        (30.0, 60.0, 10.0),  # the defaults: ten seconds
        (2.0, 3.0, 0.5),  # the tests' timings: half the margin before a reclaim
        (10.0, 10.5, 0.25),
        (10.0, 100.0, 10.0),
    ],
)
def test_a_send_waits_for_its_relay_well_before_a_reclaim(
    timeout_s: float, reclaim_s: float, expected: float
) -> None:
    assert longest_wait_s(timeout_s=timeout_s, reclaim_s=reclaim_s) == expected


def test_a_relay_without_limits_has_no_limiter() -> None:
    plain = RelayConfig(name="a", host="h")
    assert relay_limiter_config(plain) is None
    limited = RelayConfig(name="b", host="h", rate_limit="600/min", rate_burst=3, daily_quota=9)
    config = relay_limiter_config(limited)
    assert config is not None
    assert (config.per_second, config.burst, config.quota, config.quota_window_s) == (
        10.0,
        3,
        9,
        86_400.0,
    )
