"""The Lua scripts that change a task's place in one atomic step.

A task lives in exactly one of: the stream (waiting or being sent), the delayed set (a retry or a
scheduled send, until due), the dead-letter stream, or nowhere (sent). Each move between them is
one script, so a crash at any point neither loses nor duplicates a task. Every key a script
touches carries the queue's hash tag, so on Redis Cluster they all live in one slot.

Delayed tasks keep their entry's fields packed with `cmsgpack` (binary-safe, built into Redis's
Lua) so a promoted task comes back field for field. Scripts only use commands that exist in
Redis 6.2 and later.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ENQUEUE", "FORGET_CONSUMER", "PROMOTE_DUE", "REQUEUE_DEAD", "SETTLE"]

# Adds a batch of tasks (often one): each to the stream, or to the delayed set when it has a
# due time; all of them or, when the backlog limit would be passed, none.
# KEYS: stream, delayed, delayed_entries, then one idempotency key per task (a placeholder for
#       tasks without one: every key must be declared, for Redis Cluster)
# ARGV: max_backlog (0: none), idempotency window ms, then per task: task id, due ms (0: now),
#       '1' if it has an idempotency key else '0', n, and the entry's n fields and values
# Returns {1, backlog, id, id, ...}: the backlog after the call (-1 when there is no limit), then
# per task its id, or the original task's id when its idempotency key was used within the window;
# {-1, backlog} when stream + delayed + the new tasks would pass the limit.
ENQUEUE: Final = """
local function original(i, task)
  return ARGV[i + 2] == '1' and redis.call('GET', KEYS[3 + task])
end
local limit = tonumber(ARGV[1])
local backlog = -1
if limit > 0 then
  -- Only tasks not already enqueued under their idempotency key count against the limit, so a
  -- retried request gets its original id back even from a full queue.
  local new, i, task = 0, 3, 0
  while i <= #ARGV do
    task = task + 1
    if not original(i, task) then new = new + 1 end
    i = i + 4 + tonumber(ARGV[i + 3])
  end
  backlog = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
  if new > 0 and backlog + new > limit then return {-1, backlog} end
  backlog = backlog + new
end
local ids, i, task = {1, backlog}, 3, 0
while i <= #ARGV do
  task = task + 1
  local task_id, due, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 3])
  local first = original(i, task)
  if first then
    ids[#ids + 1] = first
  else
    if due ~= '0' then
      redis.call('ZADD', KEYS[2], due, task_id)
      redis.call('HSET', KEYS[3], task_id, cmsgpack.pack({unpack(ARGV, i + 4, i + 3 + n)}))
    else
      redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 4, i + 3 + n))
    end
    if ARGV[i + 2] == '1' then redis.call('SET', KEYS[3 + task], task_id, 'PX', ARGV[2]) end
    ids[#ids + 1] = task_id
  end
  i = i + 4 + n
end
return ids
"""

# Records the fate of an entry after an attempt: acknowledges and deletes it, and optionally
# schedules a retry copy and/or adds a dead-letter record. Only the first settle of an entry
# takes effect (XACK answers 1 once), so two workers that both hold an entry (one reclaimed it
# from a stalled other) can never both schedule it; when the loser had sent the email, it leaves
# a sent record so that the winner's retry copy is not sent again.
# KEYS: stream, delayed, delayed_entries, dead, sent record
# ARGV: group, entry id, task id, sent record ttl ms (0: the attempt sent nothing), retry due ms,
#       n = number of retry-copy items, n retry-copy fields and values, then the dead-letter
#       record's fields and values (none: no dead letter)
# Returns {1, dead-letter stream length} when this settle took effect, {0, 0} when the entry
# had already been settled.
SETTLE: Final = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  if ARGV[4] ~= '0' then redis.call('SET', KEYS[5], ARGV[2], 'PX', ARGV[4]) end
  return {0, 0}
end
redis.call('XDEL', KEYS[1], ARGV[2])
local n = tonumber(ARGV[6])
if n > 0 then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[3], cmsgpack.pack({unpack(ARGV, 7, 6 + n)}))
end
local dead = 0
if #ARGV > 6 + n then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, 7 + n))
  dead = redis.call('XLEN', KEYS[4])
end
return {1, dead}
"""

# Moves up to `limit` delayed tasks whose time has come back into the stream.
# KEYS: stream, delayed, delayed_entries; ARGV: now ms, limit
# Returns {tasks moved, due ms of the next delayed task or false}.
PROMOTE_DUE: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, task_id in ipairs(due) do
  local packed = redis.call('HGET', KEYS[3], task_id)
  if packed then redis.call('XADD', KEYS[1], '*', unpack(cmsgpack.unpack(packed))) end
  redis.call('ZREM', KEYS[2], task_id)
  redis.call('HDEL', KEYS[3], task_id)
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#due, next_due[2] or false}
"""

# Puts a dead letter back on the stream with a fresh attempt budget (an operator's decision):
# the dead_* fields and the attempt count go, the requeue count `rq` goes up, and any sent
# record of the task is dropped so the new copy is really sent.
# KEYS: dead, stream, the task's sent record; ARGV: dead-letter entry id
# Returns the new stream entry id, or false when no such dead letter exists.
REQUEUE_DEAD: Final = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local fields, copy, requeues = found[1][2], {}, 0
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if name == 'rq' then
    requeues = tonumber(value) or 0
  elseif name ~= 'tries' and name ~= 'err' and string.sub(name, 1, 5) ~= 'dead_' then
    copy[#copy + 1] = name
    copy[#copy + 1] = value
  end
end
copy[#copy + 1] = 'rq'
copy[#copy + 1] = tostring(requeues + 1)
local new_id = redis.call('XADD', KEYS[2], '*', unpack(copy))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
return new_id
"""

# Removes a consumer from the group, but only while it owns no pending entry (XGROUP
# DELCONSUMER would silently drop them from the pending list).
# KEYS: stream; ARGV: group, consumer
# Returns 1 when removed, 0 when it owns entries (or does not exist).
FORGET_CONSUMER: Final = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
