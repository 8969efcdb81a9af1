"""The queue's sending limits in Redis: a GCRA rate limiter, a rolling quota and the adaptive
rate, shared by every worker of the queue, on Redis's clock.

GCRA (the generic cell rate algorithm) keeps one number, the theoretical arrival time `tat` of
the next unit: a unit sent at the limit's pace moves it on by the emission interval `T` (1/rate);
a send conforms when `tat` is at most `burst * T` ahead of now. ACQUIRE does not refuse: it
hands each entry of a batch its own slot (a delay from now), so the worker sleeps exactly until
then and the sends of every worker, whatever their clocks, add up to the limit. Only the quota
refuses (a send past it would be refused by the provider anyway).

The rolling quota counts units in buckets of 1/1440 of its window (a minute of a day) in a list,
oldest first; a bucket leaves the count once all of it is older than the window, so the count
never understates the sends of the last window.

The effective rate starts at the configured limit; THROTTLE lowers it (multiplicative decrease)
when the SMTP server said "slow down", at most once per calm period (until the slots already
handed out have passed, and at least `_MIN_CALM_US`), and ACQUIRE raises it back step by step
(additive increase) while nothing lowers it, never above the limit.

Every time is in microseconds of Redis's `TIME`; a caller may pass `now_us` instead (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.typing import EncodableT

from ..keys import QueueKeys
from .replies import as_str
from .scripts import ScriptCall

__all__ = [
    "ACQUIRE",
    "THROTTLE",
    "Acquired",
    "LimiterConfig",
    "LimiterState",
    "Throttled",
    "acquire",
    "acquire_reply",
    "limiter_state",
    "throttle",
    "throttle_reply",
]

# The effective rate after a "slow down": this share of what it was (TCP CUBIC's factor)...
DECREASE_FACTOR: Final = 0.7
# ...never below this share of the limit...
FLOOR_SHARE: Final = 0.01
# ...and it climbs back by this share of the limit per second without a "slow down".
RECOVERY_SHARE_PER_S: Final = 0.02
_RECOVERY_INTERVAL_US: Final = 1_000_000
# After a decrease, no other for this long at least: replies to sends made at the old rate
# arrive meanwhile and must not lower it again.
_MIN_CALM_US: Final = 2_000_000
# The quota's window in this many buckets.
_QUOTA_BUCKETS: Final = 1440

# Acquires slots for a batch of entries, in order: each gets the delay (us) after which it may
# be sent, or -1 when the quota has no room for it, or its slot would be more than the longest
# wait away (nor for any later entry of the batch, so that a lane keeps its order). A refused
# entry takes nothing: the next caller may take that slot.
# KEYS: limiter hash, quota list
# ARGV: limit per second (0: no rate limit), burst, quota (0: none), quota window us, read
#       horizon us, now us (0: Redis's TIME), recovery step per second, recovery interval us,
#       longest wait us (0: any), then one cost per entry
# Returns {effective rate x1000, 1 if it was raised now else 0, units that the next call could
#          start within the horizon, us to wait before that is at least 1, quota used,
#          us until the first refused entry would be taken (0: none refused),
#          delay of each entry...}
ACQUIRE: Final = """
local now = tonumber(ARGV[6])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local quota, window, horizon = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local step, interval, longest = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local bucket_us = math.max(1, math.floor(window / 1440))
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'stepped_at', 'used')
local list_type = redis.call('TYPE', KEYS[2]).ok
if list_type ~= 'none' and list_type ~= 'list' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' is not a list')
end
-- A first write that adds nothing: at maxmemory Redis refuses only a script's first write
-- (a later one would leave it half done), so the HSET below goes through and a worker keeps
-- sending, and settling, which is what frees memory.
redis.call('HDEL', KEYS[1], '-')
local tat = math.max(tonumber(state[1]) or now, now)
local rate, stepped_at, raised = limit, now, 0
if limit > 0 then
  rate = math.min(tonumber(state[2]) or limit, limit)
  stepped_at = tonumber(state[3]) or now
  if rate < limit then
    local steps = math.floor((now - stepped_at) / interval)
    if steps > 0 then
      rate = math.min(limit, rate + steps * step)
      stepped_at = stepped_at + steps * interval
      raised = 1
    end
  else
    stepped_at = now
  end
end
local used = 0
local function head_bucket(item)
  local sep = string.find(item, ':', 1, true)
  return tonumber(string.sub(item, 1, sep - 1)), tonumber(string.sub(item, sep + 1))
end
if quota > 0 then
  used = tonumber(state[4]) or 0
  while true do
    local head = redis.call('LINDEX', KEYS[2], 0)
    if not head then break end
    local b, count = head_bucket(head)
    if (b + 1) * bucket_us > now - window then break end
    used = used - count
    redis.call('LPOP', KEYS[2])
  end
  if used < 0 or redis.call('LLEN', KEYS[2]) == 0 then used = 0 end
end
local T = 0
if limit > 0 then T = 1000000 / rate end
local delays, added, refused_cost, late = {}, 0, 0, 0
for i = 10, #ARGV do
  local cost = tonumber(ARGV[i])
  if refused_cost == 0 and late == 0 and quota > 0 and cost > 0 and used + added + cost > quota then
    refused_cost = cost
  end
  local delay = 0
  if refused_cost == 0 and late == 0 and T > 0 and cost > 0 then
    delay = math.max(0, tat + cost * T - burst * T - now)
    if longest > 0 and delay > longest then late = delay - longest end
  end
  if refused_cost > 0 or late > 0 then
    delays[#delays + 1] = -1
  else
    if T > 0 and cost > 0 then tat = tat + cost * T end
    added = added + cost
    delays[#delays + 1] = math.floor(delay)
  end
end
used = used + added
if quota > 0 and added > 0 then
  local b = math.floor(now / bucket_us)
  local tail = redis.call('LINDEX', KEYS[2], -1)
  if tail then
    local tb, count = head_bucket(tail)
    if tb >= b then
      redis.call('LSET', KEYS[2], -1, tb .. ':' .. (count + added))
    else
      redis.call('RPUSH', KEYS[2], b .. ':' .. added)
    end
  else
    redis.call('RPUSH', KEYS[2], b .. ':' .. added)
  end
  redis.call('PEXPIRE', KEYS[2], math.ceil(2 * window / 1000))
end
local ready, wait = 1000000, 0
if T > 0 then
  ready = math.floor((now + horizon + burst * T - tat) / T)
  if ready < 1 then
    ready = 0
    wait = tat + T - burst * T - horizon - now
  end
end
local reopen = 0
if quota > 0 then
  ready = math.max(0, math.min(ready, quota - used))
  if ready == 0 or refused_cost > 0 then
    local need = used + math.max(refused_cost, 1) - quota
    local freed = 0
    for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
      local b, count = head_bucket(item)
      freed = freed + count
      if freed >= need then
        reopen = math.max(1, (b + 1) * bucket_us + window - now)
        break
      end
    end
    if reopen == 0 then reopen = window end
    if ready == 0 then wait = math.max(wait, reopen) end
  end
end
if late > 0 then reopen = math.max(reopen, late) end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat), 'rate', string.format('%.6f', rate),
  'stepped_at', string.format('%.0f', stepped_at), 'used', used, 'limit', ARGV[1],
  'burst', burst, 'quota', quota, 'window', ARGV[4])
local reply = {math.floor(rate * 1000), raised, ready, math.floor(wait), used, math.floor(reopen)}
for _, delay in ipairs(delays) do reply[#reply + 1] = delay end
return reply
"""

# Lowers the effective rate after a "slow down" reply, unless it was lowered within the calm
# period.
# KEYS: limiter hash
# ARGV: limit per second, floor per second, factor, minimum calm us, now us (0: Redis's TIME)
# Returns {1 if lowered now else 0, effective rate x1000}
THROTTLE: Final = """
local now = tonumber(ARGV[5])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'calm_until')
local rate = math.min(tonumber(state[2]) or limit, limit)
if now < (tonumber(state[3]) or 0) then return {0, math.floor(rate * 1000)} end
redis.call('HDEL', KEYS[1], '-')  -- see ACQUIRE: maxmemory refuses only a first write
local lowered = math.max(tonumber(ARGV[2]), rate * tonumber(ARGV[3]))
local calm_until = now + math.max(tonumber(ARGV[4]), (tonumber(state[1]) or now) - now)
redis.call('HSET', KEYS[1], 'rate', string.format('%.6f', lowered),
  'calm_until', string.format('%.0f', calm_until), 'stepped_at', string.format('%.0f', calm_until))
return {lowered < rate and 1 or 0, math.floor(lowered * 1000)}
"""


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """The limits every worker of a queue applies (from SMTP_RATE_LIMIT and friends)."""

    per_second: float | None  # None: no rate limit
    burst: int = 1
    quota: int | None = None
    quota_window_s: float = 86_400.0

    @property
    def active(self) -> bool:
        """Whether there is anything to limit."""
        return self.per_second is not None or self.quota is not None


@dataclass(frozen=True, slots=True)
class Acquired:
    """ACQUIRE's answer for one batch."""

    per_second: float | None  # the effective rate (None: no rate limit)
    raised: bool  # this call raised the effective rate
    ready: int  # units the next batch may start within the read horizon
    wait_s: float  # before `ready` is at least 1
    quota_used: int
    reopen_s: float  # until the first refused entry would be taken (quota room, or its slot)
    delays_s: tuple[float | None, ...]  # per entry: seconds to wait, None: refused (quota)


@dataclass(frozen=True, slots=True)
class Throttled:
    """THROTTLE's answer."""

    lowered: bool
    per_second: float


@dataclass(frozen=True, slots=True)
class LimiterState:
    """What the limiter hash and quota list hold, as `admin stats` shows it."""

    per_second: float | None  # configured, as the workers last wrote it
    burst: int | None
    effective_per_second: float | None
    quota: int | None
    quota_window_s: float | None
    quota_used: int


def acquire(
    keys: QueueKeys,
    config: LimiterConfig,
    costs: Sequence[int],
    *,
    horizon_s: float,
    longest_wait_s: float = 0.0,
    relay: str | None = None,
    now_us: int = 0,
) -> ScriptCall:
    """The ACQUIRE call for a batch whose entries cost `costs` (recipients or 1 each): the
    queue's limiter, or `relay`'s own. `longest_wait_s` (0: any) refuses a slot further away."""
    limit = config.per_second or 0.0
    args: list[EncodableT] = [
        repr(limit),
        config.burst,
        config.quota or 0,
        int(config.quota_window_s * 1_000_000),
        int(horizon_s * 1_000_000),
        now_us,
        repr(limit * RECOVERY_SHARE_PER_S),
        _RECOVERY_INTERVAL_US,
        int(longest_wait_s * 1_000_000),
        *costs,
    ]
    return ScriptCall(ACQUIRE, list(_keys(keys, relay)), args)


def _keys(keys: QueueKeys, relay: str | None) -> tuple[str, str]:
    """The limiter hash and quota list of the queue, or of one relay."""
    if relay is None:
        return keys.limiter, keys.quota
    return keys.relay_limiter(relay), keys.relay_quota(relay)


def acquire_reply(reply: Any, config: LimiterConfig) -> Acquired:
    """Read ACQUIRE's reply."""
    values = [int(value) for value in reply]
    return Acquired(
        per_second=values[0] / 1000 if config.per_second is not None else None,
        raised=values[1] == 1,
        ready=values[2],
        wait_s=values[3] / 1_000_000,
        quota_used=values[4],
        reopen_s=values[5] / 1_000_000,
        delays_s=tuple(None if delay < 0 else delay / 1_000_000 for delay in values[6:]),
    )


def throttle(
    keys: QueueKeys, per_second: float, *, relay: str | None = None, now_us: int = 0
) -> ScriptCall:
    """The THROTTLE call for a queue (or `relay`) limited to `per_second`."""
    args: list[EncodableT] = [
        repr(per_second),
        repr(per_second * FLOOR_SHARE),
        repr(DECREASE_FACTOR),
        _MIN_CALM_US,
        now_us,
    ]
    return ScriptCall(THROTTLE, [_keys(keys, relay)[0]], args)


def throttle_reply(reply: Any) -> Throttled:
    """Read THROTTLE's reply."""
    return Throttled(lowered=int(reply[0]) == 1, per_second=int(reply[1]) / 1000)


def limiter_state(fields: dict[Any, Any], buckets: Sequence[Any], now_us: int) -> LimiterState:
    """The limiter as HGETALL and LRANGE read it at `now_us`: quota buckets older than the
    window no longer count (ACQUIRE drops them only when it next runs)."""
    values = {as_str(k): as_str(v) for k, v in fields.items()}
    limit = float(values.get("limit", "0") or 0)
    quota = int(values.get("quota", "0") or 0)
    window_us = int(values.get("window", "0") or 0)
    used = 0
    if quota and window_us:
        bucket_us = max(1, window_us // _QUOTA_BUCKETS)
        for item in buckets:
            bucket, _, count = as_str(item).partition(":")
            if (int(bucket) + 1) * bucket_us > now_us - window_us:
                used += int(count)
    rate = values.get("rate")
    return LimiterState(
        per_second=limit or None,
        burst=int(values["burst"]) if "burst" in values else None,
        effective_per_second=min(float(rate), limit) if rate and limit else (limit or None),
        quota=quota or None,
        quota_window_s=window_us / 1_000_000 if quota else None,
        quota_used=used,
    )
