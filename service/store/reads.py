"""Read-only scripts: what the dashboard shows of the delayed set, whose copies only Lua unpacks.

A delayed task's entry is stored packed with `cmsgpack` (see `scripts.ENQUEUE`); these scripts
unpack it in Redis and return the fields a person looks at, so no msgpack decoder is needed
here. They write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ..keys import QueueKeys
from .replies import as_str
from .scripts import ScriptCall

__all__ = [
    "SCHEDULED_ONE",
    "SCHEDULED_PAGE",
    "Scheduled",
    "scheduled_one",
    "scheduled_page",
    "scheduled_reply",
]

# The fields returned per task: its id, due ms, then these of its stored copy ('' when absent or
# when the copy cannot be unpacked).
_SHOWN: Final = ("task", "at", "tries", "err")

_UNPACK: Final = """
local function shown(task_id, due)
  local row = {task_id, due, '', '', '', ''}
  local packed = redis.call('HGET', KEYS[2], task_id)
  if not packed then return row end
  local ok, fields = pcall(cmsgpack.unpack, packed)
  if not ok or type(fields) ~= 'table' then return row end
  for i = 1, #fields - 1, 2 do
    local name, value = fields[i], fields[i + 1]
    if type(value) == 'string' then
      if name == 'task' then row[3] = value
      elseif name == 'at' then row[4] = value
      elseif name == 'tries' then row[5] = value
      elseif name == 'err' then row[6] = value end
    end
  end
  return row
end
"""

# KEYS: delayed, delayed_entries; ARGV: from due ms, skip, count
# Returns one row per task (see `shown`), in due order.
SCHEDULED_PAGE: Final = (
    _UNPACK
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', ARGV[2],
  ARGV[3])
local rows = {}
for i = 1, #due, 2 do rows[#rows + 1] = shown(due[i], due[i + 1]) end
return rows
"""
)

# KEYS: delayed, delayed_entries; ARGV: task id. Returns {row} or {} when it is not delayed.
SCHEDULED_ONE: Final = (
    _UNPACK
    + """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due then return {} end
return {shown(ARGV[1], due)}
"""
)


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A delayed task: a scheduled send or a retry, with what its stored copy says."""

    task_id: str
    due_ms: int
    task_json: str  # the EmailTask as JSON ('' if the copy could not be read)
    enqueued_at_ms: int | None
    tries: int
    last_error: str


def scheduled_page(keys: QueueKeys, *, from_ms: int, skip: int, count: int) -> ScriptCall:
    """The SCHEDULED_PAGE call."""
    return ScriptCall(SCHEDULED_PAGE, [keys.delayed, keys.delayed_entries], [from_ms, skip, count])


def scheduled_one(keys: QueueKeys, task_id: str) -> ScriptCall:
    """The SCHEDULED_ONE call."""
    return ScriptCall(SCHEDULED_ONE, [keys.delayed, keys.delayed_entries], [task_id])


def scheduled_reply(reply: Any) -> list[Scheduled]:
    """Read the rows of SCHEDULED_PAGE or SCHEDULED_ONE."""
    rows = []
    for task_id, due, task, at, tries, err in reply:
        rows.append(
            Scheduled(
                task_id=as_str(task_id),
                due_ms=int(float(due)),
                task_json=task.decode(errors="replace") if isinstance(task, bytes) else task,
                enqueued_at_ms=int(at) if at.isdigit() else None,
                tries=int(tries) if tries.isdigit() else 0,
                last_error=err.decode(errors="replace") if isinstance(err, bytes) else err,
            )
        )
    return rows
