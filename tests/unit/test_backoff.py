"""Backoff while Redis is unavailable."""

from __future__ import annotations

from service.worker.backoff import backoff_delay


def test_backoff_doubles_up_to_a_cap() -> None:
    class Fixed:
        def __init__(self, value: float) -> None:
            self.value = value

        def random(self) -> float:
            return self.value

    highs = [backoff_delay(n, rng=Fixed(1.0)) for n in range(1, 8)]  # type: ignore[arg-type]
    assert highs == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert backoff_delay(3, rng=Fixed(0.0)) == 1.0  # type: ignore[arg-type]
