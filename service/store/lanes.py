"""Reading the priority lanes: one script takes up to COUNT new entries from the lanes in the
order the worker chose (`worker/lanes.py`), so one read never hands out more than the worker can
send, whichever lanes hold them.

When every lane is empty the script returns each lane's newest entry id instead: an XREAD that
blocks from those ids wakes on the first entry added to any lane after the script ran (nothing
can slip in between), and claims nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..keys import CONSUMER_GROUP, Lane, QueueKeys
from .replies import Entry, as_str
from .scripts import ScriptCall

__all__ = ["READ_LANES", "LaneRead", "read_lanes", "read_lanes_reply"]

# KEYS: the lanes' streams in reading order; ARGV: group, consumer, count, the normal lane's
# position in KEYS
# Returns {entries, tails}: entries as {lane position in KEYS, id, {field, value, ...}} in
# reading order; tails (only when no entry was read) the newest id of each lane ('0-0': empty).
# A lane without the group fails the script with Redis's NOGROUP error (nothing was read from
# the lanes after it), except a high or low lane whose stream does not exist: it holds nothing
# (a queue from before lanes, whose worker could not create their groups at maxmemory).
READ_LANES: Final = """
local wanted = tonumber(ARGV[3])
local entries = {}
for i = 1, #KEYS do
  if wanted <= 0 then break end
  local reply = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', wanted,
    'STREAMS', KEYS[i], '>')
  if type(reply) == 'table' and reply.err then
    if i == tonumber(ARGV[4]) or redis.call('EXISTS', KEYS[i]) == 1 then
      return redis.error_reply(reply.err)
    end
    reply = false
  end
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      entries[#entries + 1] = {i, entry[1], entry[2]}
      wanted = wanted - 1
    end
  end
end
local tails = {}
if #entries == 0 then
  for i = 1, #KEYS do
    local newest = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    tails[i] = newest[1] and newest[1][1] or '0-0'
  end
end
return {entries, tails}
"""


@dataclass(frozen=True, slots=True)
class LaneRead:
    """What one READ_LANES call got: entries, or (none) where to block from, by stream."""

    entries: list[Entry]
    tails: dict[str, str]


def read_lanes(keys: QueueKeys, lanes: Sequence[Lane], consumer: str, count: int) -> ScriptCall:
    """The READ_LANES call: up to `count` new entries from `lanes`, in that order."""
    normal = list(lanes).index("normal") + 1
    return ScriptCall(
        READ_LANES, [keys.lane(lane) for lane in lanes], [CONSUMER_GROUP, consumer, count, normal]
    )


def read_lanes_reply(keys: QueueKeys, lanes: Sequence[Lane], reply: Any) -> LaneRead:
    """Read READ_LANES's reply to a call on `lanes`."""
    found, tails = reply
    entries = []
    for position, entry_id, flat in found:
        fields = {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
        entries.append(Entry(as_str(entry_id), fields, 1, lanes[int(position) - 1]))
    streams = [keys.lane(lane) for lane in lanes]
    return LaneRead(entries, {s: as_str(t) for s, t in zip(streams, tails, strict=False)})
