"""The pairing of the producer's calls with the floor's (`bench/producing.py`)."""

from __future__ import annotations

import pytest

from bench.producing import Paired, median_paired, paired


async def test_each_measured_call_is_followed_by_the_floors() -> None:
    calls: list[tuple[str, int]] = []

    async def measured(index: int) -> None:
        calls.append(("measured", index))

    async def floor(index: int) -> None:
        calls.append(("floor", index))

    result = await paired(measured, floor, [1_000, 1_000, 500])
    assert calls == [
        ("measured", 0), ("floor", 0), ("measured", 1), ("floor", 1), ("measured", 2), ("floor", 2)
    ]  # fmt: skip
    assert result.rate > 0
    assert result.floor > 0


@pytest.mark.parametrize(
    ("samples", "first"),
    [
        ([Paired(1, 2), Paired(3, 4), Paired(1, 4)], Paired(1, 2)),  # ratios 0.5, 0.75, 0.25
        ([Paired(3, 4), Paired(1, 4)], Paired(1, 4)),  # an even count: the lower middle
        ([Paired(2, 4)], Paired(2, 4)),
    ],
)
async def test_the_run_with_the_median_ratio_comes_first(
    samples: list[Paired], first: Paired
) -> None:
    remaining = iter(samples)

    async def measure() -> Paired:
        return next(remaining)

    runs = await median_paired(len(samples), measure)
    assert runs[0] == first
    assert sorted(runs, key=lambda run: run.ratio) == sorted(samples, key=lambda run: run.ratio)
