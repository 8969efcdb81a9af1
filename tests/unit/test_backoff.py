"""Backoff delays: doubling from `first`, capped, jittered within the upper half."""

from __future__ import annotations

import pytest

from service.worker.backoff import backoff_delay


@pytest.mark.parametrize(
    ("first", "cap", "highs"),
    [
        (0.5, 15.0, [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]),
        # The worker's retry defaults: 60 s doubling up to an hour.
        (60.0, 3600.0, [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0]),
    ],
)
def test_backoff_doubles_up_to_a_cap(first: float, cap: float, highs: list[float]) -> None:
    delays = [backoff_delay(n, first=first, cap=cap, jitter=1.0) for n in range(1, 8)]
    assert delays == highs


@pytest.mark.parametrize(("failures", "low"), [(1, 30.0), (3, 120.0), (1000, 1800.0)])
def test_jitter_never_goes_below_half(failures: int, low: float) -> None:
    assert backoff_delay(failures, first=60.0, cap=3600.0, jitter=0.0) == low
