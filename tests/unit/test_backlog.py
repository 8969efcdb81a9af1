"""BacklogEstimate: when a plain enqueue may skip the exact backlog check."""

from __future__ import annotations

import pytest

from service.producer.backlog import FRESH_SECONDS, BacklogEstimate, margin

NOW = 1_000.0


@pytest.mark.parametrize(
    ("limit", "read", "read_age", "added_since", "allowed"),
    [
        (0, 0, None, 0, True),  # no limit: never checked
        (100_000, 0, None, 0, False),  # never read: check
        (100_000, 0, FRESH_SECONDS * 2, 0, False),  # read too long ago: check
        (100_000, 0, 0.0, 0, True),
        (100_000, 89_999, FRESH_SECONDS / 2, 0, True),
        (100_000, 90_000, 0.0, 0, False),  # the whole margin must stay free
        (100_000, 90_001, 0.0, 0, False),  # within the margin: check
        (100_000, 89_000, 0.0, 1_001, False),  # own enqueues since the read count
        (1_000, 0, 0.0, 0, False),  # limits up to 1,000 are always checked
        (10, 0, 0.0, 0, False),
        (5_000, 3_999, 0.0, 0, True),  # margin 1,000
        (5_000, 4_001, 0.0, 0, False),
    ],
)
def test_plain_add_allowed(
    limit: int, read: int, read_age: float | None, added_since: int, allowed: bool
) -> None:
    estimate = BacklogEstimate(limit)
    if read_age is not None:
        estimate.observe(read, NOW - read_age)
    for _ in range(added_since):
        estimate.add()

    assert estimate.allows_plain_add(NOW) is allowed


@pytest.mark.parametrize(
    ("limit", "expected"), [(100_000, 10_000), (20_000, 2_000), (5_000, 1_000), (10, 1_000)]
)
def test_margin(limit: int, expected: int) -> None:
    assert margin(limit) == expected


@pytest.mark.parametrize(("count", "allowed"), [(1, True), (10_000, True), (10_001, False)])
def test_a_batch_counts_whole(count: int, allowed: bool) -> None:
    estimate = BacklogEstimate(100_000)
    estimate.observe(80_000, NOW)  # the batch may fill up to the margin: 90,000

    assert estimate.allows_plain_add(NOW, count) is allowed


def test_a_new_read_forgets_the_enqueues_counted_since_the_last() -> None:
    estimate = BacklogEstimate(100_000)
    estimate.observe(80_000, NOW)
    for _ in range(20_000):
        estimate.add()
    assert not estimate.allows_plain_add(NOW)

    estimate.observe(50_000, NOW)

    assert estimate.allows_plain_add(NOW)
