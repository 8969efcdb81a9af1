"""This worker's share of the queue's minute history, gathered in memory between heartbeats.

Each attempt adds to its minute here (no I/O); the heartbeat hands what gathered to the store
(`QueueStore.add_minutes`, one pipelined round trip) and puts it back if Redis failed, so a
Redis outage delays the counts without losing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ..store.history import MinuteCounts

__all__ = ["MinuteTally"]

# Peaks are kept for the minutes still being written to, so that each write carries the
# minute's peak so far (HSET replaces it); older ones are dropped.
_PEAK_MINUTES: Final = 3


class MinuteTally:
    """Counts and latency peaks by minute since the last `take`."""

    def __init__(self) -> None:
        # Per minute: sent, failed, dead, latency sum; lists added to in place, as a frozen
        # MinuteCounts per email would make three objects of five fields each.
        self._counts: dict[int, list[int]] = {}
        self._peaks: dict[int, int] = {}
        self._dirty_peaks: set[int] = set()

    def record(self, outcome: str, *, at_s: float, latency_ms: int | None = None) -> None:
        """Count one settled attempt at time `at_s` (seconds since the epoch).

        `outcome` is the logs' word: sent and partly_sent count as sent (with `latency_ms`);
        retry and dead_letter as failed; the others (requeued, throttled, held, skipped) used
        no attempt and are not counted.
        """
        minute = int(at_s // 60)
        if outcome in ("sent", "partly_sent"):
            latency = max(latency_ms or 0, 0)
            self._add(minute, sent=1, latency_ms_sum=latency)
            if latency > self._peaks.get(minute, -1):
                self._peaks[minute] = latency
                self._dirty_peaks.add(minute)
        elif outcome in ("retry", "dead_letter"):
            self._add(minute, failed=1, dead=int(outcome == "dead_letter"))

    def take(self) -> tuple[dict[int, MinuteCounts], dict[int, int]]:
        """What gathered since the last take: counts, and the peaks that changed."""
        counts, self._counts = self._counts, {}
        peaks = {minute: self._peaks[minute] for minute in self._dirty_peaks}
        self._dirty_peaks = set()
        if self._peaks:
            newest = max(self._peaks)
            self._peaks = {m: v for m, v in self._peaks.items() if m > newest - _PEAK_MINUTES}
        taken = {
            minute: MinuteCounts(sent=sent, failed=failed, dead=dead, latency_ms_sum=latency)
            for minute, (sent, failed, dead, latency) in counts.items()
        }
        return taken, peaks

    def put_back(self, counts: Mapping[int, MinuteCounts], peaks: Mapping[int, int]) -> None:
        """Return what `take` gave when writing it failed: the next take carries it too."""
        for minute, add in counts.items():
            self._add(minute, add.sent, add.failed, add.dead, add.latency_ms_sum)
        self._dirty_peaks.update(peaks)
        for minute, peak in peaks.items():
            self._peaks[minute] = max(peak, self._peaks.get(minute, 0))

    def _add(
        self, minute: int, sent: int = 0, failed: int = 0, dead: int = 0, latency_ms_sum: int = 0
    ) -> None:
        tally = self._counts.get(minute)
        if tally is None:
            self._counts[minute] = [sent, failed, dead, latency_ms_sum]
            return
        tally[0] += sent
        tally[1] += failed
        tally[2] += dead
        tally[3] += latency_ms_sum
