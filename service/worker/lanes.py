"""Which lane a read serves first: high, then normal, then low, with a share for each.

Each read takes up to the free send slots from the lanes in the order `lane_order` gives,
moving to the next lane only when one has no new entry. Most reads start with high; one read in
`LOW_TURN_EVERY` starts with low, and another one in `NORMAL_TURN_EVERY` with normal. So, while it
has work, low is served first in at least 1 read in 10, and normal in at least 1 in 10 (2 in 10
when low has none), however much high mail waits; a high-priority task waits for at most one
read of another lane before its own.
"""

from __future__ import annotations

from typing import Final

from ..keys import Lane

__all__ = ["LOW_TURN_EVERY", "NORMAL_TURN_EVERY", "lane_order"]

LOW_TURN_EVERY: Final = 10
NORMAL_TURN_EVERY: Final = 10
_NORMAL_TURN: Final = LOW_TURN_EVERY // 2  # between two low turns, not next to one

_HIGH_FIRST: Final[tuple[Lane, ...]] = ("high", "normal", "low")
_NORMAL_FIRST: Final[tuple[Lane, ...]] = ("normal", "high", "low")
_LOW_FIRST: Final[tuple[Lane, ...]] = ("low", "high", "normal")


def lane_order(turn: int) -> tuple[Lane, ...]:
    """The order in which read number `turn` (0, 1, 2, ...) takes from the lanes."""
    if turn % LOW_TURN_EVERY == LOW_TURN_EVERY - 1:
        return _LOW_FIRST
    if turn % NORMAL_TURN_EVERY == _NORMAL_TURN - 1:
        return _NORMAL_FIRST
    return _HIGH_FIRST
