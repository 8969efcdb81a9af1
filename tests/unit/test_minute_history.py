"""The minute history's arithmetic: what a worker gathers between heartbeats, and how a
minute's hash reads back (pure)."""

from __future__ import annotations

import pytest

from service.store.history import MinuteCounts, minute_counts
from service.worker.history import MinuteTally

MINUTE = 29_000_000  # minutes since the epoch
AT = MINUTE * 60.0


@pytest.mark.parametrize(
    ("attempts", "counts", "peaks"),
    [
        ([], {}, {}),
        ([("sent", 0, 100)], {MINUTE: MinuteCounts(sent=1, latency_ms_sum=100)}, {MINUTE: 100}),
        (
            [("sent", 0, 100), ("partly_sent", 30, 300), ("sent", 59.9, 200)],
            {MINUTE: MinuteCounts(sent=3, latency_ms_sum=600)},
            {MINUTE: 300},
        ),
        (
            [("retry", 0, None), ("dead_letter", 1, None), ("sent", 61, 50)],
            {
                MINUTE: MinuteCounts(failed=2, dead=1),
                MINUTE + 1: MinuteCounts(sent=1, latency_ms_sum=50),
            },
            {MINUTE + 1: 50},
        ),
        # Attempts that used none (held back, requeued, throttled, already sent) are not counted.
        ([(word, 0, None) for word in ("requeued", "throttled", "held", "skipped")], {}, {}),
        # A clock step back cannot make a negative latency.
        ([("sent", 0, -5)], {MINUTE: MinuteCounts(sent=1)}, {MINUTE: 0}),
    ],
)
def test_tally(
    attempts: list[tuple[str, float, int | None]],
    counts: dict[int, MinuteCounts],
    peaks: dict[int, int],
) -> None:
    tally = MinuteTally()
    for outcome, second, latency in attempts:
        tally.record(outcome, at_s=AT + second, latency_ms=latency)
    assert tally.take() == (counts, peaks)
    assert tally.take() == ({}, {})


def test_a_peak_is_written_again_only_when_it_grows_and_survives_a_failed_write() -> None:
    tally = MinuteTally()
    tally.record("sent", at_s=AT, latency_ms=500)
    assert tally.take()[1] == {MINUTE: 500}
    tally.record("sent", at_s=AT + 1, latency_ms=100)
    counts, peaks = tally.take()
    assert peaks == {}  # 500 stays the minute's peak; HSET need not repeat it
    tally.put_back(counts, peaks)
    tally.record("sent", at_s=AT + 2, latency_ms=900)
    assert tally.take() == ({MINUTE: MinuteCounts(sent=2, latency_ms_sum=1000)}, {MINUTE: 900})


@pytest.mark.parametrize(
    ("reply", "counts"),
    [
        ({}, MinuteCounts()),
        ({b"sent": b"3", b"failed": b"1", b"latency_ms_sum": b"600"},
         MinuteCounts(sent=3, failed=1, latency_ms_sum=600)),
        ({b"latency_ms_max:w1": b"40", b"latency_ms_max:w2": b"90"},
         MinuteCounts(latency_ms_max=90)),
        ({b"sent": b"x", b"other": b"5", b"dead": b"2"}, MinuteCounts(dead=2)),
    ],
)  # fmt: skip
def test_minute_counts_reads_a_hash(reply: dict[bytes, bytes], counts: MinuteCounts) -> None:
    assert minute_counts(reply) == counts


def test_increments_leave_out_zeros_and_the_peak() -> None:
    assert MinuteCounts(sent=2, latency_ms_max=9).increments() == {"sent": 2}
    assert MinuteCounts(sent=2, latency_ms_sum=10).latency_ms_mean == 5
    assert MinuteCounts().latency_ms_mean is None
