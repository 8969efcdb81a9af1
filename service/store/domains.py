"""Per-recipient-domain limits in Redis (SMTP_DOMAIN_LIMITS), shared by every worker of the
queue, on Redis's clock.

Each limited domain has two times in one hash: `sent`, the GCRA of its sends (burst 1: a send
starts no earlier than one interval after the domain's previous one, so its rate holds whatever
else happens), and `tail`, the end of its line. A batch takes its slots in two steps around the
shared limiter (`limiter.ACQUIRE`):

- PLAN: each entry takes its place in the line of every limited domain among its recipients
  (the latest of theirs). One whose place is further than the read horizon is set aside: the
  worker puts it back as a copy due just before its slot, using no attempt and no shared slot,
  and the slot is kept for its task id in the domain's sorted set. A copy read again goes once
  every copy kept before it in each of its domains has gone (else it keeps its place and is put
  back again, to when its turn should come), and a new entry queues behind every kept copy:
  a domain's emails go out in the order they were first read, even when copies come back late
  behind a stream backlog (up to `KEEP_LATE_US`), while the emails to other domains flow.
- COMMIT: the entries that go, once the shared limiter has given each its slot, take their
  domains' send slots from then on: an entry sends at the later of the two, and the domain's
  next send is one interval after that; a copy's kept slot is released then (until then it
  holds its place against other workers). One that the domain would now keep waiting past the
  horizon (another worker went first) is set aside after all (its shared slot is left unused),
  a copy keeping its kept slot, first in line.

A kept slot ahead of a copy is dropped when its task's status says it is finished (cancelled
while set aside, dead-lettered), and any kept slot more than `KEEP_LATE_US` in the past: a copy
that is far behind, or never comes back (lost, or cancelled with the status ledger off), holds
its domain's line that long at most.

Every time is in microseconds of Redis's `TIME`; a caller may pass `now_us` instead (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.typing import EncodableT

from ..keys import QueueKeys
from ..rates import DomainLimit
from .replies import as_str
from .scripts import ScriptCall

__all__ = [
    "DOMAIN_COMMIT",
    "DOMAIN_PLAN",
    "DomainSlot",
    "DomainState",
    "commit_domains",
    "configured_domains",
    "domain_slots_reply",
    "domain_state",
    "plan_domains",
]

# A kept slot this far in the past is given up (its copy is far behind, or lost): it stops
# holding its domain's line, and the copy, if it comes, queues anew at the end. Longer would
# keep the order behind longer stream backlogs, and stall the domain that much longer meanwhile.
KEEP_LATE_US: Final = 10_000_000

# What both scripts start with: the clock, the keys' types (checked before any write), each
# domain's interval, `sent` and `tail` (ARGV from `first` on: n, then per domain its name and
# its interval us), and the kept slots older than `keep late` dropped.
# KEYS: domain limiter hash, then per domain its kept slots sorted set
_PROLOGUE: Final = """
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
for i, key in ipairs(KEYS) do
  local kind = i == 1 and 'hash' or 'zset'
  local found = redis.call('TYPE', key).ok
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is not a ' .. kind)
  end
end
local first, keep_late = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[first])
local interval, sent, tail, fields = {}, {}, {}, {}
for d = 1, n do
  local name = ARGV[first - 1 + 2 * d]
  interval[d] = tonumber(ARGV[first + 2 * d])
  fields[2 * d - 1] = 'sent:' .. name
  fields[2 * d] = 'tail:' .. name
end
if n > 0 then
  local stored = redis.call('HMGET', KEYS[1], unpack(fields))
  for d = 1, n do
    sent[d] = tonumber(stored[2 * d - 1]) or 0
    tail[d] = tonumber(stored[2 * d]) or 0
  end
end
-- Removing adds nothing: at maxmemory Redis refuses only a script's first write (see
-- limiter.ACQUIRE), and a worker must go on sending, and settling, which frees memory.
redis.call('HDEL', KEYS[1], '-')
for d = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[1 + d], '-inf', '(' .. string.format('%.0f', now - keep_late))
end
local function latest(slot, times, ds)
  for _, d in ipairs(ds) do slot = math.max(slot, times[d]) end
  return slot
end
local function domains_at(i, k)
  local ds = {}
  for j = 1, k do ds[j] = tonumber(ARGV[i + j - 1]) end
  return ds
end
local function save(extra)
  local values = extra
  for d = 1, n do
    values[#values + 1] = fields[2 * d - 1]
    values[#values + 1] = string.format('%.0f', sent[d])
    values[#values + 1] = fields[2 * d]
    values[#values + 1] = string.format('%.0f', tail[d])
  end
  if #values > 0 then redis.call('HSET', KEYS[1], unpack(values)) end
end
local reply, kept = {}, {}  -- kept: per domain, the slots kept in this call (score, task id...)
for d = 1, n do kept[d] = {} end
local function keep(task_id, slot, ds)
  for _, d in ipairs(ds) do
    kept[d][#kept[d] + 1] = string.format('%.0f', slot)
    kept[d][#kept[d] + 1] = task_id
  end
end
local function set_aside(task_id, slot, ds)
  slot = latest(slot, tail, ds)
  for _, d in ipairs(ds) do tail[d] = slot + interval[d] end
  keep(task_id, slot, ds)
  reply[#reply + 1] = -math.max(1, math.floor(slot - now))
end
local function write_kept()
  for d = 1, n do
    if #kept[d] > 0 then redis.call('ZADD', KEYS[1 + d], unpack(kept[d])) end
  end
end
"""

# Each entry's place in the lines of its limited domains, in order.
# KEYS: domain limiter hash, then per domain its kept slots sorted set
# ARGV: now us (0: Redis's TIME), 7, keep late us, horizon us, the configuration as written
#       ("domain=rate,..."), the status records' key prefix (a kept slot whose task is finished
#       is dropped; the records share the queue's hash tag), n domains, per domain its name and
#       its interval us, then per entry its task id, k, and the 1-based numbers of its k
#       limited domains
# Returns per entry the us until its slot: >= 0, it may go (COMMIT gives its send slot); < 0,
#         set aside, to be read again that many us from now
DOMAIN_PLAN: Final = (
    _PROLOGUE
    + """
local horizon, status_prefix = tonumber(ARGV[4]), ARGV[6]
local going, gone_count, waiting, dropped = {}, {}, {}, {}
for d = 1, n do
  going[d] = sent[d]  -- the soonest the domain can take another send, given this batch so far
  -- kept slots at the head of the line that go in this batch (COMMIT removes them) or are
  -- dropped
  gone_count[d] = 0
  waiting[d] = redis.call('ZCARD', KEYS[1 + d])  -- kept slots not yet taken
  dropped[d] = {}
end
local function mark_gone(d)
  gone_count[d] = gone_count[d] + 1
  waiting[d] = waiting[d] - 1
end
-- Whether `task_id` holds the earliest kept slot still waiting in each of `ds`. A slot ahead
-- of it whose task is finished (cancelled while set aside, or dead-lettered) is dropped.
local function is_next(task_id, ds)
  for _, d in ipairs(ds) do
    local next_id
    local checked = 0
    while not next_id and checked < 10 do
      local head = redis.call('ZRANGE', KEYS[1 + d], gone_count[d], gone_count[d])[1]
      if not head or head == task_id then next_id = head break end
      local state = redis.call('HGET', status_prefix .. head, 's')
      if state == 'cancelled' or state == 'dead' or state == 'sent' then
        dropped[d][#dropped[d] + 1] = head
        mark_gone(d)
        checked = checked + 1
      else
        next_id = head
      end
    end
    if next_id ~= task_id then return false end
  end
  return true
end
local i = first + 1 + 2 * n
while i <= #ARGV do
  local task_id, k = ARGV[i], tonumber(ARGV[i + 1])
  local ds = domains_at(i + 2, k)
  local own = k > 0 and tonumber(redis.call('ZSCORE', KEYS[1 + ds[1]], task_id))
  if own then
    -- a copy set aside earlier: it goes once every copy kept before it has gone
    local slot = latest(math.max(now, own), going, ds)
    if is_next(task_id, ds) and slot - now <= horizon then
      for _, d in ipairs(ds) do
        going[d] = slot + interval[d]
        mark_gone(d)
      end
      reply[#reply + 1] = math.floor(slot - now)
    else
      -- not its turn yet: it keeps its place, read again when its turn should come (one
      -- interval on per copy still waiting ahead of it)
      local ahead = 0
      for _, d in ipairs(ds) do
        local rank = redis.call('ZRANK', KEYS[1 + d], task_id) - gone_count[d]
        ahead = math.max(ahead, rank * interval[d])
      end
      local again = math.max(own, latest(now, going, ds) + ahead)
      reply[#reply + 1] = -math.max(1, math.floor(again - now))
    end
  else
    local slot = latest(latest(now, tail, ds), going, ds)
    -- behind copies still waiting (late, or lost): its turn comes after theirs
    local ahead = 0
    for _, d in ipairs(ds) do ahead = math.max(ahead, waiting[d] * interval[d]) end
    slot = math.max(slot, latest(now, going, ds) + ahead)
    for _, d in ipairs(ds) do tail[d] = slot + interval[d] end
    if slot - now <= horizon and ahead == 0 then
      for _, d in ipairs(ds) do going[d] = slot + interval[d] end
      reply[#reply + 1] = math.floor(slot - now)
    else
      keep(task_id, slot, ds)
      for _, d in ipairs(ds) do waiting[d] = waiting[d] + 1 end
      reply[#reply + 1] = -math.max(1, math.floor(slot - now))
    end
  end
  i = i + 2 + k
end
for d = 1, n do
  if #dropped[d] > 0 then redis.call('ZREM', KEYS[1 + d], unpack(dropped[d])) end
end
save({'limits', ARGV[5]})
write_kept()
return reply
"""
)

# The send slots of the entries that go, in order, each no earlier than its shared slot.
# KEYS: domain limiter hash, then per domain its kept slots sorted set
# ARGV: now us (0: Redis's TIME), 5, keep late us, horizon us, n domains, per domain its name
#       and its interval us, then per entry its task id, the us until its shared slot, k, and
#       the 1-based numbers of its k limited domains
# Returns per entry the us until it may be sent (>= 0), or < 0: set aside after all (another
#         worker took the domain's next slots meanwhile), its slot that many us away
DOMAIN_COMMIT: Final = (
    _PROLOGUE
    + """
local horizon = tonumber(ARGV[4])
local taken = {}  -- per domain, the kept slots taken now
for d = 1, n do taken[d] = {} end
local i = first + 1 + 2 * n
while i <= #ARGV do
  local task_id, earliest, k = ARGV[i], now + tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local ds = domains_at(i + 3, k)
  local slot = latest(earliest, sent, ds)
  local own = k > 0 and redis.call('ZSCORE', KEYS[1 + ds[1]], task_id)
  if slot - earliest <= horizon then
    for _, d in ipairs(ds) do
      sent[d] = slot + interval[d]
      tail[d] = math.max(tail[d], sent[d])
      if own then taken[d][#taken[d] + 1] = task_id end
    end
    reply[#reply + 1] = math.floor(slot - now)
  elseif own then
    reply[#reply + 1] = -math.max(1, math.floor(slot - now))  -- keeps its place, first in line
  else
    set_aside(task_id, slot, ds)
  end
  i = i + 3 + k
end
for d = 1, n do
  if #taken[d] > 0 then redis.call('ZREM', KEYS[1 + d], unpack(taken[d])) end
end
save({})
write_kept()
return reply
"""
)


@dataclass(frozen=True, slots=True)
class DomainSlot:
    """One entry's slot in its domains' lines."""

    delay_s: float  # until the slot
    set_aside: bool  # too far ahead: put the entry back until shortly before it


@dataclass(frozen=True, slots=True)
class DomainState:
    """One limited domain as `admin stats` shows it."""

    domain: str
    limit: str  # as configured, e.g. 20/min
    next_free_s: float  # until its next free slot (0: free now)
    set_aside: int  # entries waiting for their kept slot


def plan_domains(
    keys: QueueKeys,
    limits: Sequence[DomainLimit],
    entries: Sequence[tuple[str, Sequence[str]]],
    *,
    horizon_s: float,
    now_us: int = 0,
) -> ScriptCall:
    """The DOMAIN_PLAN call for `entries`, each a task id and its limited domains (those of
    `limits` among its recipients)."""
    number = _numbers(limits)
    args: list[EncodableT] = [
        now_us,
        7,
        KEEP_LATE_US,
        int(horizon_s * 1_000_000),
        ",".join(f"{limit.domain}={limit.rate}" for limit in limits),
        keys.status_prefix,
        *_domain_args(limits),
    ]
    for task_id, domains in entries:
        args += [task_id, len(domains), *(number[domain] for domain in domains)]
    return ScriptCall(DOMAIN_PLAN, _keys(keys, limits), args)


def commit_domains(
    keys: QueueKeys,
    limits: Sequence[DomainLimit],
    entries: Sequence[tuple[str, float, Sequence[str]]],
    *,
    horizon_s: float,
    now_us: int = 0,
) -> ScriptCall:
    """The DOMAIN_COMMIT call for `entries` that go, each a task id, the seconds until its
    shared slot, and its limited domains."""
    number = _numbers(limits)
    args: list[EncodableT] = [now_us, 5, KEEP_LATE_US, int(horizon_s * 1_000_000)]
    args += _domain_args(limits)
    for task_id, shared_s, domains in entries:
        args += [task_id, int(shared_s * 1_000_000), len(domains)]
        args += [number[domain] for domain in domains]
    return ScriptCall(DOMAIN_COMMIT, _keys(keys, limits), args)


def _keys(keys: QueueKeys, limits: Sequence[DomainLimit]) -> list[str]:
    return [keys.domain_limiter, *(keys.domain_kept(limit.domain) for limit in limits)]


def domain_slots_reply(reply: Any) -> list[DomainSlot]:
    """Read DOMAIN_PLAN's or DOMAIN_COMMIT's reply."""
    return [DomainSlot(abs(int(value)) / 1_000_000, int(value) < 0) for value in reply]


def _numbers(limits: Sequence[DomainLimit]) -> dict[str, int]:
    return {limit.domain: n for n, limit in enumerate(limits, start=1)}


def _domain_args(limits: Sequence[DomainLimit]) -> list[EncodableT]:
    args: list[EncodableT] = [len(limits)]
    for limit in limits:
        args += [limit.domain, repr(1_000_000 / limit.rate.per_second)]
    return args


def configured_domains(fields: dict[Any, Any]) -> list[str]:
    """The domains of the configuration the workers last wrote (HGETALL of the hash)."""
    values = {as_str(k): as_str(v) for k, v in fields.items()}
    return [item.partition("=")[0] for item in filter(None, values.get("limits", "").split(","))]


def domain_state(
    fields: dict[Any, Any], set_aside: Sequence[int], now_us: int
) -> tuple[DomainState, ...]:
    """The limited domains as the workers last configured them, read with HGETALL at `now_us`,
    with the number of kept slots of each (`set_aside`, in the configuration's order)."""
    values = {as_str(k): as_str(v) for k, v in fields.items()}
    states = []
    items = filter(None, values.get("limits", "").split(","))
    for item, waiting in zip(items, set_aside, strict=True):
        domain, _, limit = item.partition("=")
        free = max(int(values.get(f"{kind}:{domain}", "0") or 0) for kind in ("sent", "tail"))
        states.append(DomainState(domain, limit, max(0, free - now_us) / 1_000_000, waiting))
    return tuple(states)
