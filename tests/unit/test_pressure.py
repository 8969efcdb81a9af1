"""Redis under pressure, the pure parts: what a dead letter of a hostile entry keeps, what a
script is never asked to write, what counts as an out-of-memory refusal, and logging the
condition once per change of state."""

from __future__ import annotations

import pytest
from redis.exceptions import OutOfMemoryError, ResponseError
from structlog.testing import capture_logs

from service.errors import RedisFull
from service.keys import QueueKeys
from service.store import MAX_ENTRY_FIELDS, Entry, RetryCopy, SettleWrite, scripts
from service.store.replies import is_out_of_memory, memory_figures
from service.worker.backoff import MemoryState
from service.worker.fate import give_up

NOW = 1_800_000_000_000


def _entry(count: int) -> Entry:
    fields = {b"v": b"1", **{f"f{n}".encode(): b"x" for n in range(count - 1)}}
    return Entry("1-0", fields, deliveries=1)


@pytest.mark.parametrize(
    ("count", "kept", "dropped"),
    [
        (9, 9, None),
        (MAX_ENTRY_FIELDS, MAX_ENTRY_FIELDS, None),
        (MAX_ENTRY_FIELDS + 1, MAX_ENTRY_FIELDS, b"1"),
        (6_005, MAX_ENTRY_FIELDS, b"5005"),
    ],
)
def test_a_dead_letter_keeps_what_a_script_can_copy(
    count: int, kept: int, dropped: bytes | None
) -> None:
    planned = give_up(_entry(count), None, "too many fields", consumer="w", now_ms=NOW)
    record = planned.write.dead
    assert record is not None
    entry_fields = [name for name in record if not name.startswith(b"dead_")]
    assert len(entry_fields) == kept
    assert entry_fields[0] == b"v"  # the first fields, the ones a producer writes, are kept
    assert record.get(b"dead_fields_dropped") == dropped
    assert record[b"dead_reason"] == b"too many fields"
    scripts.settle(QueueKeys("q"), planned.write)  # a script can write it


@pytest.mark.parametrize(
    "write",
    [
        SettleWrite("1-0", "t", retry=RetryCopy(1, dict(_entry(2_000).fields))),
        SettleWrite("1-0", "t", dead=dict(_entry(5_000).fields)),
    ],
)
def test_a_settle_larger_than_a_script_can_write_is_refused_before_redis(
    write: SettleWrite,
) -> None:
    with pytest.raises(ValueError, match="fields is more than a script can write"):
        scripts.settle(QueueKeys("q"), write)


@pytest.mark.parametrize(
    ("error", "out_of_memory"),
    [
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (  # Redis 6.2: a refusal inside a script
            ResponseError(
                "Error running script (call to f_1): @user_script:1: @user_script: 1: "
                "-OOM command not allowed when used memory > 'maxmemory'."
            ),
            True,
        ),
        (ResponseError("NOGROUP No such key"), False),
        (ValueError("OOM command not allowed"), False),
    ],
)
def test_out_of_memory_refusals_in_either_shape(error: Exception, out_of_memory: bool) -> None:
    assert is_out_of_memory(error) is out_of_memory


def test_memory_figures_from_info() -> None:
    info = {"used_memory": 1_048_576, "maxmemory": 1_000_000, "maxmemory_policy": "noeviction"}
    assert memory_figures(info) == (1_048_576, 1_000_000, "noeviction")
    assert memory_figures({}) == (None, None, None)


def test_the_condition_is_logged_once_when_it_begins_and_once_when_it_ends() -> None:
    state = MemoryState()
    full = RedisFull("SETTLE", used_memory=2, maxmemory=1, policy="noeviction")
    with capture_logs() as logs:
        state.refused(full, "record_fate")
        state.refused(full, "heartbeat")
        state.refused(full, "promote")
        state.written("promote")
        state.written("heartbeat")
        state.refused(full, "record_fate")
    assert [(log["event"], log.get("operation")) for log in logs] == [
        ("redis_out_of_memory", "record_fate"),
        ("redis_memory_available", "promote"),
        ("redis_out_of_memory", "record_fate"),
    ]
    assert (logs[0]["used_memory"], logs[0]["maxmemory"], logs[0]["maxmemory_policy"]) == (
        2,
        1,
        "noeviction",
    )
