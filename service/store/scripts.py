"""The Lua scripts that change a task's place in one atomic step, and how each is called.

A task lives in exactly one of: the stream (waiting or being sent), the delayed set (a retry or a
scheduled send, until due), the dead-letter stream, or nowhere (sent). Each move between them is
one script, so a crash at any point neither loses nor duplicates a task. Every key a script
touches carries the queue's hash tag, so on Redis Cluster they all live in one slot.

Delayed tasks keep their entry's fields packed with `cmsgpack` (binary-safe, built into Redis's
Lua) so a promoted task comes back field for field. Scripts only use commands that exist in
Redis 6.2 and later.

Each script has a builder below it that turns named values into its KEYS and ARGV (a
`ScriptCall`), and a reader of its reply: no other module knows a script's argument layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, cast

from redis.typing import EncodableT, FieldT

from ..keys import CONSUMER_GROUP, Lane, QueueKeys
from .replies import as_str

__all__ = [
    "MAX_ENTRY_FIELDS",
    "SENT_RECORD_TTL_MS",
    "EnqueueReply",
    "NewTask",
    "RetryCopy",
    "ScriptCall",
    "SettleReply",
    "SettleWrite",
    "StatusNote",
    "add_now",
    "cancel",
    "enqueue",
    "enqueue_reply",
    "field_lane",
    "forget_consumer",
    "promote_due",
    "promote_reply",
    "requeue_dead",
    "settle",
    "settle_reply",
    "status_expiry",
    "status_ttl_ms",
    "task_status",
    "xadd_fields",
]

# A sent record outlives any retry copy it guards (its whole retry schedule, at the defaults).
SENT_RECORD_TTL_MS: Final = 7 * 24 * 3600 * 1000
# The most fields a stream entry may have for the worker to handle it: a v1 entry has at most 9.
# A script copies an entry with one call (XADD, or unpack() into cmsgpack), and Lua's unpack()
# stops near 8,000 values; entries beyond this are dead-lettered without their extra fields.
MAX_ENTRY_FIELDS: Final = 1000
# What a script may be asked to write in one record: an entry plus the fields a retry copy or a
# dead letter adds (about 2 x 1,050 values, well inside unpack()'s limit).
_MAX_RECORD_FIELDS: Final = MAX_ENTRY_FIELDS + 50
# The most characters of a reply or a reason a status record keeps.
_MAX_STATUS_TEXT: Final = 300
# Stands in for an absent task id or idempotency key in a key name (never read or written).
_NONE: Final = "-"


# The lanes (see `QueueKeys.lanes`): the scripts that add to a stream declare the three lane
# streams as KEYS[1] (normal), KEYS[2] (high) and KEYS[3] (low), and put an entry into the lane its
# `lane` field names (absent or unknown: normal).
_LANE: Final = """
local function lane_stream(lane)
  if lane == 'high' then return KEYS[2] elseif lane == 'low' then return KEYS[3] end
  return KEYS[1]
end
local function lane_in(list, first, last)
  for i = first, last - 1, 2 do
    if list[i] == 'lane' then return list[i + 1] end
  end
  return 'normal'
end
"""


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script to run: its source (redis-py keeps the SHA) and its KEYS and ARGV."""

    source: str
    keys: list[str]
    args: list[EncodableT]


# Adds a batch of tasks (often one): each to the stream, or to the delayed set when it has a
# due time; all of them or, when the backlog limit would be passed, none. Each new task's status
# record (see `service.status`) says queued (with its stream entry id) or scheduled.
# A task due now goes into its lane's stream (`_LANE`); the backlog counts every lane.
# KEYS: the three lane streams, delayed, delayed_entries, then per task its idempotency key (a
#       placeholder for tasks without one: every key must be declared, for Redis Cluster) and its
#       status record
# ARGV: max_backlog (0: none), idempotency window ms, now ms, then per task: task id, due ms
#       (0: now), '1' if it has an idempotency key else '0', status expiry ms since the epoch
#       ('0': no record), its tags (space-separated), n, and the entry's n fields and values
# Returns {1, backlog, id, id, ...}: the backlog after the call (-1 when there is no limit), then
# per task its id, or the original task's id when its idempotency key was used within the window;
# {-1, backlog} when stream + delayed + the new tasks would pass the limit.
ENQUEUE: Final = (
    _LANE
    + """
local function original(i, task)
  return ARGV[i + 2] == '1' and redis.call('GET', KEYS[4 + 2 * task])
end
local limit = tonumber(ARGV[1])
-- Only tasks not already enqueued under their idempotency key count against the limit, so a
-- retried request gets its original id back even from a full queue. A status record of the
-- wrong type fails its read here, before anything is written.
local new, i, task = 0, 4, 0
while i <= #ARGV do
  task = task + 1
  if not original(i, task) then new = new + 1 end
  if ARGV[i + 3] ~= '0' then redis.call('HGET', KEYS[5 + 2 * task], 's') end
  i = i + 6 + tonumber(ARGV[i + 5])
end
local backlog = -1
if limit > 0 then
  backlog = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2]) + redis.call('XLEN', KEYS[3])
    + redis.call('ZCARD', KEYS[4])
  if new > 0 and backlog + new > limit then return {-1, backlog} end
  backlog = backlog + new
end
local ids
ids, i, task = {1, backlog}, 4, 0
while i <= #ARGV do
  task = task + 1
  local task_id, due, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 5])
  local first = original(i, task)
  if first then
    ids[#ids + 1] = first
  else
    local entry_id, lane = false, lane_in(ARGV, i + 6, i + 5 + n)
    if due ~= '0' then
      redis.call('ZADD', KEYS[4], due, task_id)
      redis.call('HSET', KEYS[5], task_id, cmsgpack.pack({unpack(ARGV, i + 6, i + 5 + n)}))
    else
      entry_id = redis.call('XADD', lane_stream(lane), '*', unpack(ARGV, i + 6, i + 5 + n))
    end
    if ARGV[i + 2] == '1' then redis.call('SET', KEYS[4 + 2 * task], task_id, 'PX', ARGV[2]) end
    if ARGV[i + 3] ~= '0' then
      local status = KEYS[5 + 2 * task]
      if entry_id then
        redis.call('HSET', status, 's', 'queued', 'at', ARGV[3], 'e', entry_id, 'l', lane,
          'tags', ARGV[i + 4])
      else
        redis.call('HSET', status, 's', 'scheduled', 'at', ARGV[3], 'due', due, 'tags', ARGV[i + 4])
      end
      redis.call('PEXPIREAT', status, ARGV[i + 3])
    end
    ids[#ids + 1] = task_id
  end
  i = i + 6 + n
end
return ids
"""
)


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task about to be enqueued: its id, its entry's fields, and when it is due."""

    task_id: str
    fields: Mapping[str, bytes]
    due_ms: int = 0  # 0: now, into the stream; else into the delayed set
    idempotency_key: str | None = None
    tags: Sequence[str] = ()

    @property
    def lane(self) -> Lane:
        """The lane its `lane` field names, as the scripts read it (see `_LANE`)."""
        return field_lane(self.fields.get("lane"))


def xadd_fields(task: NewTask) -> dict[FieldT, EncodableT]:
    """`task`'s entry as redis-py's `xadd` takes it, not copied (xadd only reads it)."""
    # str keys and bytes values are what xadd takes; dict invariance hides it from mypy.
    return cast("dict[FieldT, EncodableT]", task.fields)


def field_lane(value: bytes | None) -> Lane:
    """The lane an entry's `lane` field names: absent or unknown is normal, as in `_LANE`."""
    return "high" if value == b"high" else "low" if value == b"low" else "normal"


@dataclass(frozen=True, slots=True)
class EnqueueReply:
    """What ENQUEUE did: `ids` in order (an earlier task's id where its key was used), or
    nothing when the batch would pass the backlog limit (`full`)."""

    full: bool
    backlog: int | None  # after the call, or the one that refused it; None: no limit
    ids: list[str]


def enqueue(
    keys: QueueKeys,
    tasks: Sequence[NewTask],
    *,
    max_backlog: int,
    window_ms: int,
    status_ttl_ms: int = 0,
    now_ms: int = 0,
) -> ScriptCall:
    """The ENQUEUE call for `tasks` (`max_backlog` 0: no limit; `status_ttl_ms` 0: no status
    records)."""
    args: list[EncodableT] = [max_backlog, window_ms, now_ms]
    script_keys = [*keys.lanes, keys.delayed, keys.delayed_entries]
    for task in tasks:
        expiry = status_expiry(status_ttl_ms, now_ms=now_ms, due_ms=task.due_ms)
        args += [task.task_id, task.due_ms, 0 if task.idempotency_key is None else 1, expiry]
        args += [" ".join(task.tags), 2 * len(task.fields)]
        args += [item for pair in task.fields.items() for item in pair]
        script_keys += [keys.idempotency(task.idempotency_key or _NONE), keys.status(task.task_id)]
    return ScriptCall(ENQUEUE, script_keys, args)


# Adds tasks due now to their lanes' streams, each with its status record saying queued (with
# its stream entry id): the producer's plain path with status records (tasks without a due time
# or an idempotency key, while the backlog limit is far off: see `service.producer.backlog`),
# at the cost of an XADD, an HSET and a PEXPIREAT each. Nothing is checked but the status
# records' types (before the first write), so none of the backlog count, idempotency keys or
# per-task due times ENQUEUE reads and passes. The record is the one ENQUEUE writes.
# KEYS: per task, the stream of its lane (`NewTask.lane`, as `_LANE` reads it) and its status
#       record
# ARGV: now ms, status expiry ms since the epoch, then per task: its tags (space-separated), n,
#       and the entry's n fields and values
# Returns the number of tasks added.
ADD_NOW: Final = (
    _LANE
    + """
local tasks = #KEYS / 2
-- A status record of the wrong type fails its read here, before anything is written.
for task = 1, tasks do redis.call('HGET', KEYS[2 * task], 's') end
local i = 3
for task = 1, tasks do
  local n, status = tonumber(ARGV[i + 1]), KEYS[2 * task]
  local entry_id = redis.call('XADD', KEYS[2 * task - 1], '*', unpack(ARGV, i + 2, i + 1 + n))
  redis.call('HSET', status, 's', 'queued', 'at', ARGV[1], 'e', entry_id,
    'l', lane_in(ARGV, i + 2, i + 1 + n), 'tags', ARGV[i])
  redis.call('PEXPIREAT', status, ARGV[2])
  i = i + 2 + n
end
return tasks
"""
)


def add_now(
    keys: QueueKeys, tasks: Sequence[NewTask], *, status_ttl_ms: int, now_ms: int
) -> ScriptCall:
    """The ADD_NOW call for `tasks`, all due now (ValueError for one that is not, or for no
    status TTL: without records, plain XADDs do the job)."""
    if status_ttl_ms <= 0:
        raise ValueError("ADD_NOW writes status records: status_ttl_ms must be positive")
    args: list[EncodableT] = [now_ms, status_expiry(status_ttl_ms, now_ms=now_ms)]
    script_keys: list[str] = []
    for task in tasks:
        if task.due_ms or task.idempotency_key is not None:
            raise ValueError("ADD_NOW takes tasks due now without an idempotency key")
        script_keys += [keys.lane(task.lane), keys.status(task.task_id)]
        args += [" ".join(task.tags), 2 * len(task.fields)]
        args += [item for pair in task.fields.items() for item in pair]
    return ScriptCall(ADD_NOW, script_keys, args)


def status_ttl_ms(ttl: timedelta) -> int:
    """A status TTL in milliseconds; ValueError for a negative one (zero: no records)."""
    if ttl < timedelta(0):
        raise ValueError("status_ttl must not be negative")
    return int(ttl.total_seconds() * 1000)


def status_expiry(ttl_ms: int, *, now_ms: int, due_ms: int = 0) -> int:
    """When a status record written at `now_ms` expires (ms since the epoch; 0: write none):
    `ttl_ms` after its change, or after its due time when that is later, so that a task
    scheduled beyond the TTL keeps its record until it has been sent."""
    return max(now_ms, due_ms) + ttl_ms if ttl_ms > 0 else 0


def enqueue_reply(reply: Any) -> EnqueueReply:
    """Read ENQUEUE's reply."""
    backlog = int(reply[1])
    return EnqueueReply(
        full=reply[0] == -1,
        backlog=None if backlog < 0 else backlog,
        ids=[as_str(task_id) for task_id in reply[2:]],
    )


# Records the fate of an entry after an attempt: acknowledges and deletes it, optionally
# schedules a retry copy and/or adds a dead-letter record, and notes the task's status. Only the
# first settle of an entry takes effect (it is pending once), so two workers that both hold an
# entry (one reclaimed it from a stalled other) can never both schedule it; when the loser had
# sent the email, it leaves a sent record so that the winner's retry copy is not sent again, and
# the status says sent.
#
# Redis does not undo a script that fails part-way, so everything that can fail is checked
# before the first write, and the writes that add data (the retry copy, the dead letter) come
# before XACK + XDEL: at maxmemory Redis refuses the first of them (a script's first write may
# be refused; later ones may not), the script ends having changed nothing, and the entry stays
# pending until the worker settles it again. A plain acknowledgement frees memory first and
# then notes the status, so it goes through at maxmemory.
# KEYS: the entry's lane stream, delayed, delayed_entries, dead, sent record, status record
# ARGV: group, entry id, task id, sent record ttl ms (0: the attempt sent nothing), retry due ms,
#       status ('': none; sent, sent_copy, retrying or dead), status expiry ms since the epoch,
#       now ms, failed attempts, the status text (a reply or a reason),
#       n = number of retry-copy items, n retry-copy fields and values, then the dead-letter
#       record's fields and values (none: no dead letter)
# Returns {1, dead-letter stream length} when this settle took effect, {0, 0} when the entry
# was no longer pending (settled by another worker, or its stream is gone).
SETTLE: Final = """
local function note_status()
  local state = ARGV[6]
  if state == 'sent_copy' then
    redis.call('HSET', KEYS[6], 's', 'sent', 'at', ARGV[8])
  elseif state == 'retrying' then
    redis.call('HSET', KEYS[6], 's', state, 'at', ARGV[8], 'due', ARGV[5], 'n', ARGV[9],
      'r', ARGV[10])
  else
    redis.call('HSET', KEYS[6], 's', state, 'at', ARGV[8], 'n', ARGV[9], 'r', ARGV[10])
  end
  redis.call('PEXPIREAT', KEYS[6], ARGV[7])
end
local n = tonumber(ARGV[11])
local status = ARGV[6] ~= ''
-- A key of the wrong type fails these reads, ending the script before it wrote anything.
if status then redis.call('HGET', KEYS[6], 's') end
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending.err or #pending == 0 then
  if ARGV[4] ~= '0' then
    redis.call('SET', KEYS[5], ARGV[2], 'PX', ARGV[4])
    if status then note_status() end
  end
  return {0, 0}
end
local retry, dead = n > 0, #ARGV > 11 + n
if retry then
  redis.call('ZCARD', KEYS[2])
  redis.call('HGET', KEYS[3], ARGV[3])
end
if dead then redis.call('XLEN', KEYS[4]) end
if retry then
  local copy = {}
  for i = 12, 11 + n do copy[#copy + 1] = ARGV[i] end
  local packed = cmsgpack.pack(copy)
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[3], packed)
end
local length = 0
if dead then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, 12 + n))
  length = redis.call('XLEN', KEYS[4])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if status then note_status() end
return {1, length}
"""


@dataclass(frozen=True, slots=True)
class RetryCopy:
    """A copy of the task to send again later: when, and the entry's fields."""

    due_ms: int
    fields: Mapping[bytes, bytes]


@dataclass(frozen=True, slots=True)
class StatusNote:
    """What a settle notes in the task's status record (see `service.status`).

    `sent_copy`: a copy of a task that another copy already sent was acknowledged (the record
    says sent and keeps the reply of the send that did it).
    """

    state: Literal["sent", "sent_copy", "retrying", "dead"]
    attempts: int = 0  # failed attempts so far
    text: str = ""  # sent: the server's reply; retrying: the last failure; dead: the reason


@dataclass(frozen=True, slots=True)
class SettleWrite:
    """Everything one settle writes for one entry, in one atomic step.

    The entry is always acknowledged and deleted. `retry` schedules a copy in the delayed set;
    `dead` adds a dead-letter record. `sent_record` says the attempt sent the email to every
    recipient it had left: if another worker settled the entry first, a sent record keeps its
    retry copy from being sent again. `status` is noted in the task's status record.
    """

    entry_id: str
    task_id: str = ""  # "" for an entry that is not a task at all
    sent_record: bool = False
    retry: RetryCopy | None = None
    dead: Mapping[bytes, bytes] | None = None
    status: StatusNote | None = None
    lane: Lane = "normal"  # the lane the entry was read from


@dataclass(frozen=True, slots=True)
class SettleReply:
    """What a settle did: `took_effect` is False when another worker had settled it first."""

    took_effect: bool
    dead_letters: int  # length of the dead-letter stream after adding a record, else 0


def settle(
    keys: QueueKeys, write: SettleWrite, *, status_ttl_ms: int = 0, now_ms: int = 0
) -> ScriptCall:
    """The SETTLE call that performs `write` (`status_ttl_ms` 0: note no status).

    Raises ValueError, before anything reaches Redis, for a record larger than a script can
    write (see `MAX_ENTRY_FIELDS`): the entry then stays pending.
    """
    task_id = write.task_id or _NONE
    retry_fields = write.retry.fields if write.retry else None
    for name, record in (("retry copy", retry_fields), ("dead letter", write.dead)):
        if record and len(record) > _MAX_RECORD_FIELDS:
            raise ValueError(
                f"a {name} of {len(record)} fields is more than a script can write "
                f"(at most {_MAX_RECORD_FIELDS})"
            )
    retry_items = _flatten(write.retry.fields) if write.retry else []
    due_ms = write.retry.due_ms if write.retry else 0
    note = write.status if write.task_id and status_ttl_ms > 0 else None
    return ScriptCall(
        SETTLE,
        [
            keys.lane(write.lane),
            keys.delayed,
            keys.delayed_entries,
            keys.dead,
            keys.sent(task_id),
            keys.status(task_id),
        ],
        [
            CONSUMER_GROUP,
            write.entry_id,
            task_id,
            SENT_RECORD_TTL_MS if write.sent_record and write.task_id else 0,
            due_ms,
            note.state if note else "",
            status_expiry(status_ttl_ms, now_ms=now_ms, due_ms=due_ms) if note else 0,
            now_ms,
            note.attempts if note else 0,
            note.text[:_MAX_STATUS_TEXT] if note else "",
            len(retry_items),
            *retry_items,
            *(_flatten(write.dead) if write.dead else []),
        ],
    )


def settle_reply(reply: Any) -> SettleReply:
    """Read SETTLE's reply."""
    return SettleReply(took_effect=reply[0] == 1, dead_letters=int(reply[1]))


# Moves up to `limit` delayed tasks whose time has come back into the stream. Every stored copy
# is read and checked before the first write; one that cannot go back (not a packed entry, an
# odd number of values, more fields than one XADD takes) is dead-lettered whole, packed, with
# the reason, rather than failing the script for every task behind it. At maxmemory the first
# XADD is refused and nothing moves. Each task's status record then says queued (with its new
# entry id) or dead, unless it says sent (a retry copy of a task that another copy sent). The
# records' keys are built here from their prefix, as the task ids are only known here (they
# share the queue's hash tag, so the declared keys' slot). A task goes back to its lane.
# KEYS: the three lane streams, delayed, delayed_entries, dead
# ARGV: now ms, limit, most fields of a record, status key prefix, status expiry ms since the
#       epoch ('0': no records)
# Returns {tasks moved, due ms of the next delayed task or false}.
PROMOTE_DUE: Final = (
    _LANE
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local most = 2 * tonumber(ARGV[3])
local status = ARGV[5] ~= '0'
local moves = {}
for _, task_id in ipairs(due) do
  local packed = redis.call('HGET', KEYS[5], task_id)
  local fields, problem = nil, nil
  if packed then
    local ok, unpacked = pcall(cmsgpack.unpack, packed)
    if not ok or type(unpacked) ~= 'table' then
      problem = 'its stored copy is not a packed entry'
    elseif #unpacked == 0 or #unpacked % 2 == 1 then
      problem = 'its stored copy holds ' .. #unpacked .. ' values, not field and value pairs'
    elseif #unpacked > most then
      problem = 'its stored copy has ' .. (#unpacked / 2) .. ' fields, more than ' .. (most / 2)
    else
      for i = 1, #unpacked do
        if type(unpacked[i]) ~= 'string' then problem = 'its stored copy holds a non-string' end
      end
      if not problem then fields = unpacked end
    end
  end
  local state = status and redis.call('HGET', ARGV[4] .. task_id, 's')
  moves[#moves + 1] = {task_id, packed, fields, problem, state}
end
for _, move in ipairs(moves) do
  local task_id, packed, fields, problem, state = move[1], move[2], move[3], move[4], move[5]
  local note = nil
  if fields then
    local lane = lane_in(fields, 1, #fields)
    local entry_id = redis.call('XADD', lane_stream(lane), '*', unpack(fields))
    note = {'s', 'queued', 'at', ARGV[1], 'e', entry_id, 'l', lane}
  elseif packed then
    local reason = 'cannot be put back in the stream: ' .. problem
    redis.call('XADD', KEYS[6], '*', 'dead_reason', reason,
      'dead_task_id', task_id, 'dead_packed', packed, 'dead_at', ARGV[1])
    note = {'s', 'dead', 'at', ARGV[1], 'r', reason}
  end
  redis.call('ZREM', KEYS[4], task_id)
  redis.call('HDEL', KEYS[5], task_id)
  -- A copy of a task another copy already sent stays "sent" (the worker will skip it).
  if status and note and state ~= 'sent' then
    redis.call('HSET', ARGV[4] .. task_id, unpack(note))
    redis.call('PEXPIREAT', ARGV[4] .. task_id, ARGV[5])
  end
end
local next_due = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
return {#due, next_due[2] or false}
"""
)


def promote_due(keys: QueueKeys, *, now_ms: int, limit: int, status_ttl_ms: int = 0) -> ScriptCall:
    """The PROMOTE_DUE call: move up to `limit` tasks due by `now_ms`."""
    return ScriptCall(
        PROMOTE_DUE,
        [*keys.lanes, keys.delayed, keys.delayed_entries, keys.dead],
        [
            now_ms,
            limit,
            _MAX_RECORD_FIELDS,
            keys.status_prefix,
            status_expiry(status_ttl_ms, now_ms=now_ms),
        ],
    )


def promote_reply(reply: Any) -> tuple[int, int | None]:
    """Read PROMOTE_DUE's reply: (tasks moved, due ms of the next delayed task or None)."""
    next_due = reply[1]
    return int(reply[0]), int(float(next_due)) if next_due else None


# Puts a dead letter back on the stream with a fresh attempt budget (an operator's decision):
# the dead_* fields and the attempt count go, the requeue count `rq` goes up, and any sent
# record of the task is dropped so the new copy is really sent, and the task's status says
# queued again, in the lane it was in. A letter too large to copy in one XADD is refused before
# anything is written.
# KEYS: the three lane streams, dead, the task's sent record, its status record
# ARGV: dead-letter entry id, most fields of a record, now ms, status expiry ms since the epoch
#       ('0': no record)
# Returns the new stream entry id, or false when no such dead letter exists.
REQUEUE_DEAD: Final = (
    _LANE
    + """
local found = redis.call('XRANGE', KEYS[4], ARGV[1], ARGV[1])
if #found == 0 then return false end
local fields, copy, requeues = found[1][2], {}, 0
if #fields > 2 * tonumber(ARGV[2]) then
  return redis.error_reply('dead letter ' .. ARGV[1] .. ' has ' .. (#fields / 2) ..
    ' fields, more than a script can copy (' .. ARGV[2] .. '): read it with XRANGE')
end
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
if ARGV[4] ~= '0' then redis.call('HGET', KEYS[6], 's') end
local lane = lane_in(copy, 1, #copy)
local new_id = redis.call('XADD', lane_stream(lane), '*', unpack(copy))
redis.call('XDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
if ARGV[4] ~= '0' then
  redis.call('HSET', KEYS[6], 's', 'queued', 'at', ARGV[3], 'e', new_id, 'l', lane, 'n', '0')
  redis.call('PEXPIREAT', KEYS[6], ARGV[4])
end
return new_id
"""
)


def requeue_dead(
    keys: QueueKeys, *, dead_id: str, task_id: str, status_ttl_ms: int = 0, now_ms: int = 0
) -> ScriptCall:
    """The REQUEUE_DEAD call for the dead letter `dead_id` of task `task_id` ("": not a task,
    no status record)."""
    expiry = status_expiry(status_ttl_ms, now_ms=now_ms) if task_id else 0
    return ScriptCall(
        REQUEUE_DEAD,
        [*keys.lanes, keys.dead, keys.sent(task_id or _NONE), keys.status(task_id or _NONE)],
        [dead_id, _MAX_RECORD_FIELDS, now_ms, expiry],
    )


# Reads a task's status record, and whether its entry is held by a worker (pending in the group):
# a queued task whose entry is pending (in the lane the record names) is being sent. Writes
# nothing.
# KEYS: the three lane streams, status record; ARGV: group
# Returns {the record's fields and values, 1 if its entry is pending else 0}.
TASK_STATUS: Final = (
    _LANE
    + """
local record = redis.call('HGETALL', KEYS[4])
local state, entry = nil, nil
for i = 1, #record, 2 do
  if record[i] == 's' then state = record[i + 1] end
  if record[i] == 'e' then entry = record[i + 1] end
end
if state == 'queued' and entry then
  local stream = lane_stream(redis.call('HGET', KEYS[4], 'l'))
  local pending = redis.pcall('XPENDING', stream, ARGV[1], entry, entry, 1)
  if not pending.err and #pending > 0 then return {record, 1} end
end
return {record, 0}
"""
)


def task_status(keys: QueueKeys, task_id: str) -> ScriptCall:
    """The TASK_STATUS call for `task_id`."""
    return ScriptCall(TASK_STATUS, [*keys.lanes, keys.status(task_id)], [CONSUMER_GROUP])


# Cancels a task that no worker holds: a delayed one (scheduled, or waiting for a retry) leaves
# the delayed set, a queued one whose entry was never handed out leaves the stream, and its
# status says cancelled. A task being sent, sent, dead or unknown is left as it is. Every write
# frees memory before the status is noted, so a cancel goes through at maxmemory. A queued
# entry is looked for in the lane its record names.
# KEYS: the three lane streams, delayed, delayed_entries, status record
# ARGV: group, task id, now ms, status expiry ms since the epoch ('0': no record)
# Returns {1, the state it was cancelled from} or {0, why not: sending, sent, dead, cancelled,
# unknown}.
CANCEL: Final = (
    _LANE
    + """
local state = redis.call('HGET', KEYS[6], 's')
local entry = redis.call('HGET', KEYS[6], 'e')
local stream = lane_stream(redis.call('HGET', KEYS[6], 'l'))
local function cancelled(was)
  if ARGV[4] ~= '0' then
    redis.call('HSET', KEYS[6], 's', 'cancelled', 'at', ARGV[3])
    redis.call('PEXPIREAT', KEYS[6], ARGV[4])
  end
  return {1, was}
end
-- Sent by a copy that lost its settle race: the other copy waiting for a retry will be skipped.
if state == 'sent' or state == 'dead' or state == 'cancelled' then return {0, state} end
if redis.call('ZSCORE', KEYS[4], ARGV[2]) then
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('HDEL', KEYS[5], ARGV[2])
  return cancelled(state or 'scheduled')
end
if state == 'queued' and entry then
  -- No group yet: no worker ever read the stream, so nothing holds the entry.
  local pending = redis.pcall('XPENDING', stream, ARGV[1], entry, entry, 1)
  if not pending.err and #pending > 0 then return {0, 'sending'} end
  if redis.call('XDEL', stream, entry) == 1 then return cancelled('queued') end
end
return {0, 'unknown'}
"""
)


def cancel(keys: QueueKeys, task_id: str, *, status_ttl_ms: int, now_ms: int) -> ScriptCall:
    """The CANCEL call for `task_id`."""
    return ScriptCall(
        CANCEL,
        [*keys.lanes, keys.delayed, keys.delayed_entries, keys.status(task_id)],
        [CONSUMER_GROUP, task_id, now_ms, status_expiry(status_ttl_ms, now_ms=now_ms)],
    )


# Removes a consumer from the group of every lane, but only while it owns no pending entry in
# any (XGROUP DELCONSUMER would silently drop them from the pending list). A lane without the
# group (made by a release before lanes) is skipped.
# KEYS: the three lane streams; ARGV: group, consumer
# Returns 1 when removed, 0 when it owns entries (or does not exist).
FORGET_CONSUMER: Final = """
for i = 1, #KEYS do
  local pending = redis.pcall('XPENDING', KEYS[i], ARGV[1], '-', '+', 1, ARGV[2])
  if i == 1 and pending.err then return redis.error_reply(pending.err) end
  if not pending.err and #pending > 0 then return 0 end
end
local removed = 0
for i = 1, #KEYS do
  local reply = redis.pcall('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], ARGV[2])
  if type(reply) ~= 'table' then removed = 1 end
end
return removed
"""


def forget_consumer(keys: QueueKeys, consumer: str) -> ScriptCall:
    """The FORGET_CONSUMER call for `consumer`."""
    return ScriptCall(FORGET_CONSUMER, list(keys.lanes), [CONSUMER_GROUP, consumer])


def _flatten(fields: Mapping[bytes, bytes]) -> list[EncodableT]:
    return [item for pair in fields.items() for item in pair]
