"""The queue's recent history: what the workers did in each minute, for the dashboard's charts.

Each worker adds its counts to one small hash per minute (`QueueKeys.minute`) with one script
per heartbeat, not per email; each hash expires two hours after its minute began, so the
history never holds more than about 120 of them, however busy the queue. The script is atomic
(a worker that could not write keeps its counts for the next beat without counting any twice)
and needs no permission a worker lacks (MULTI is not among them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

from redis.typing import EncodableT

from ..keys import QueueKeys
from .scripts import ScriptCall

__all__ = ["ADD_MINUTES", "KEEP_MINUTES_S", "MinuteCounts", "add_minutes", "minute_counts"]

# How long a minute's hash outlives the minute: the dashboard shows the last hour.
KEEP_MINUTES_S: Final = 2 * 3600


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """What the workers of a queue did in one minute."""

    sent: int = 0  # emails the SMTP server accepted (for some or all recipients)
    failed: int = 0  # attempts that ended in a retry or a dead letter
    dead: int = 0  # of which dead-lettered
    latency_ms_sum: int = 0  # enqueue (or due time) to the server's accept, over `sent`
    latency_ms_max: int = 0  # the largest one a worker reported (see `minute_counts`)

    def __add__(self, other: MinuteCounts) -> MinuteCounts:
        return MinuteCounts(
            sent=self.sent + other.sent,
            failed=self.failed + other.failed,
            dead=self.dead + other.dead,
            latency_ms_sum=self.latency_ms_sum + other.latency_ms_sum,
            latency_ms_max=max(self.latency_ms_max, other.latency_ms_max),
        )

    @property
    def latency_ms_mean(self) -> float | None:
        """The mean enqueue-to-accept latency of the minute; None when nothing was sent."""
        return self.latency_ms_sum / self.sent if self.sent else None

    def increments(self) -> dict[str, int]:
        """The hash fields HINCRBY adds (zero ones left out); the maximum is not a sum."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "latency_ms_max" and (value := getattr(self, f.name))
        }


def minute_counts(reply: Mapping[bytes, bytes]) -> MinuteCounts:
    """Read one minute's hash (HGETALL); a missing or odd field counts as 0.

    The maximum is kept per worker (`latency_ms_max:<consumer>`, each written with HSET) since
    Redis has no atomic "max" for a hash field: the largest of them is the minute's.
    """
    values: dict[str, int] = {}
    most = 0
    for raw_name, raw_value in reply.items():
        name = raw_name.decode(errors="replace")
        try:
            value = int(raw_value)
        except ValueError:
            continue
        if name.startswith("latency_ms_max:"):
            most = max(most, value)
        elif name in _SUMS:
            values[name] = value
    return MinuteCounts(**values, latency_ms_max=most)


_SUMS: Final = frozenset(f.name for f in fields(MinuteCounts)) - {"latency_ms_max"}


# Adds one worker's counts to the hashes of some minutes, sets its latency peak in each, and
# makes each expire. Every key is read (HLEN) before the first write, so a key of the wrong type
# fails the script having written nothing; at maxmemory Redis refuses the first HINCRBY, so
# nothing is written then either.
# KEYS: one minute hash each; ARGV: the peak's field name, then per key: expiry (ms since the
# epoch), peak ('' for none), n, then n field and increment pairs.
# Returns the number of hashes written.
ADD_MINUTES: Final = """
for k = 1, #KEYS do redis.call('HLEN', KEYS[k]) end
local i = 2
for k = 1, #KEYS do
  local expire_at, peak, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  if peak ~= '' then redis.call('HSET', KEYS[k], ARGV[1], peak) end
  redis.call('PEXPIREAT', KEYS[k], expire_at)
end
return #KEYS
"""


def add_minutes(
    keys: QueueKeys, consumer: str, counts: Mapping[int, MinuteCounts], peaks: Mapping[int, int]
) -> ScriptCall:
    """The ADD_MINUTES call for one worker's `counts` and latency `peaks`, by minute."""
    minutes = sorted(counts.keys() | peaks.keys())
    args: list[EncodableT] = [f"latency_ms_max:{consumer}"]
    for minute in minutes:
        increments = (counts.get(minute) or MinuteCounts()).increments()
        args += [(minute * 60 + KEEP_MINUTES_S) * 1000, peaks.get(minute, ""), len(increments)]
        args += [item for pair in increments.items() for item in pair]
    return ScriptCall(ADD_MINUTES, [keys.minute(minute) for minute in minutes], args)
