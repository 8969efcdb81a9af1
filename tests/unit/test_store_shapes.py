"""The store's pure parts, as tables: script arguments built from named values, and Redis's
reply shapes and error words read back."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import QueueFull, QueueUnavailable
from service.keys import QueueKeys
from service.store import replies, scripts
from service.store.replies import ConsumerInfo, GroupInfo

KEYS = QueueKeys("q")


def test_enqueue_lays_out_each_task_with_its_key_or_a_placeholder() -> None:
    call = scripts.enqueue(
        KEYS,
        [
            scripts.NewTask("t1", {"v": b"1", "id": b"t1"}, due_ms=0, idempotency_key="k"),
            scripts.NewTask("t2", {"v": b"1"}, due_ms=5_000, tags=("welcome", "user:42")),
        ],
        max_backlog=100,
        window_ms=86_400_000,
        status_ttl_ms=1_000,
        now_ms=2_000,
    )
    assert call.source == scripts.ENQUEUE
    assert call.keys == [
        "{q}:stream",
        "{q}:stream:high",
        "{q}:stream:low",
        "{q}:delayed",
        "{q}:delayed:entries",
        "{q}:idem:k",
        "{q}:status:t1",
        "{q}:idem:-",
        "{q}:status:t2",
    ]
    # Per task: id, due, has a key, status expiry (the later of now and due, plus the TTL),
    # tags, then the entry's fields.
    assert call.args == [
        100,
        86_400_000,
        2_000,
        "t1",
        0,
        1,
        3_000,
        "",
        4,
        "v",
        b"1",
        "id",
        b"t1",
        "t2",
        5_000,
        0,
        6_000,
        "welcome user:42",
        2,
        "v",
        b"1",
    ]


def test_add_now_lays_out_each_task_with_its_lane_stream_and_record() -> None:
    call = scripts.add_now(
        KEYS,
        [
            scripts.NewTask("t1", {"v": b"1", "id": b"t1"}),
            scripts.NewTask("t2", {"v": b"1", "lane": b"high"}, tags=("welcome", "user:42")),
        ],
        status_ttl_ms=1_000,
        now_ms=2_000,
    )
    assert call.source == scripts.ADD_NOW
    assert call.keys == ["{q}:stream", "{q}:status:t1", "{q}:stream:high", "{q}:status:t2"]
    # Now and one expiry for all (every task is due now), then per task: tags, the fields.
    assert call.args == [
        2_000, 3_000,
        "", 4, "v", b"1", "id", b"t1",
        "welcome user:42", 4, "v", b"1", "lane", b"high",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "ttl_ms"),
    [
        (scripts.NewTask("t1", {"v": b"1"}, due_ms=5_000), 1_000),  # scheduled: ENQUEUE's
        (scripts.NewTask("t1", {"v": b"1"}, idempotency_key="k"), 1_000),  # a key: ENQUEUE's
        (scripts.NewTask("t1", {"v": b"1"}), 0),  # no records: plain XADDs
    ],
)
def test_add_now_takes_only_plain_tasks_with_records(task: scripts.NewTask, ttl_ms: int) -> None:
    with pytest.raises(ValueError, match="ADD_NOW"):
        scripts.add_now(KEYS, [task], status_ttl_ms=ttl_ms, now_ms=2_000)


def test_enqueue_without_status_records_asks_for_none() -> None:
    call = scripts.enqueue(
        KEYS, [scripts.NewTask("t1", {"v": b"1"})], max_backlog=0, window_ms=1, now_ms=2_000
    )
    assert call.args[3:8] == ["t1", 0, 0, 0, ""]


@pytest.mark.parametrize(
    ("ttl_ms", "now_ms", "due_ms", "expiry"),
    [
        (1_000, 5_000, 0, 6_000),
        (1_000, 5_000, 4_000, 6_000),  # due already: counted from now
        (1_000, 5_000, 9_000, 10_000),  # scheduled beyond the TTL: kept until due, plus the TTL
        (0, 5_000, 9_000, 0),  # no records
    ],
)
def test_status_expiry(ttl_ms: int, now_ms: int, due_ms: int, expiry: int) -> None:
    assert scripts.status_expiry(ttl_ms, now_ms=now_ms, due_ms=due_ms) == expiry


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([1, 7, b"a", b"b"], scripts.EnqueueReply(full=False, backlog=7, ids=["a", "b"])),
        ([1, -1, b"a"], scripts.EnqueueReply(full=False, backlog=None, ids=["a"])),
        ([-1, 100], scripts.EnqueueReply(full=True, backlog=100, ids=[])),
    ],
)
def test_enqueue_reply(reply: list[Any], expected: scripts.EnqueueReply) -> None:
    assert scripts.enqueue_reply(reply) == expected


_NO_NOTE = ["", 0, 7, 0, ""]  # status, its expiry, now, attempts, text: nothing noted


@pytest.mark.parametrize(
    ("write", "args"),
    [
        # Acknowledge only.
        (scripts.SettleWrite("1-0", "t"), ["workers", "1-0", "t", 0, 0, *_NO_NOTE, 0]),
        # Sent: a sent record is kept for a week.
        (
            scripts.SettleWrite("1-0", "t", sent_record=True),
            ["workers", "1-0", "t", scripts.SENT_RECORD_TTL_MS, 0, *_NO_NOTE, 0],
        ),
        # A sent record needs a task id: an undecodable entry gets none, nor a status.
        (
            scripts.SettleWrite(
                "1-0", "", sent_record=True, status=scripts.StatusNote("dead", text="bad")
            ),
            ["workers", "1-0", "-", 0, 0, *_NO_NOTE, 0],
        ),
        # Sent, noted in the status record for the TTL (100 ms here) from now.
        (
            scripts.SettleWrite("1-0", "t", sent_record=True, status=scripts.StatusNote("sent")),
            ["workers", "1-0", "t", scripts.SENT_RECORD_TTL_MS, 0, "sent", 107, 7, 0, "", 0],
        ),
        # A retry copy, then a dead-letter record; the status (retrying) lasts until the retry
        # is due, plus the TTL.
        (
            scripts.SettleWrite(
                "1-0",
                "t",
                retry=scripts.RetryCopy(9_000, {b"v": b"1", b"tries": b"1"}),
                dead={b"dead_reason": b"550"},
                status=scripts.StatusNote("retrying", attempts=1, text="SMTP 451 later"),
            ),
            [
                "workers",
                "1-0",
                "t",
                0,
                9_000,
                "retrying",
                9_100,
                7,
                1,
                "SMTP 451 later",
                4,
                b"v",
                b"1",
                b"tries",
                b"1",
                b"dead_reason",
                b"550",
            ],
        ),
    ],
)
def test_settle_lays_out_its_writes(write: scripts.SettleWrite, args: list[Any]) -> None:
    call = scripts.settle(KEYS, write, status_ttl_ms=100, now_ms=7)
    assert call.source == scripts.SETTLE
    task = write.task_id or "-"
    assert call.keys == [
        "{q}:stream",
        "{q}:delayed",
        "{q}:delayed:entries",
        "{q}:dead",
        f"{{q}}:sent:{task}",
        f"{{q}}:status:{task}",
    ]
    assert call.args == args


def test_settle_notes_no_status_without_a_ttl() -> None:
    write = scripts.SettleWrite("1-0", "t", status=scripts.StatusNote("sent"))
    assert scripts.settle(KEYS, write, status_ttl_ms=0, now_ms=7).args[5:10] == _NO_NOTE


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([3, b"1700000000123"], (3, 1_700_000_000_123)),
        ([0, None], (0, None)),
        ([2, b"5e3"], (2, 5_000)),
    ],
)
def test_promote_reply(reply: list[Any], expected: tuple[int, int | None]) -> None:
    assert scripts.promote_reply(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # Redis 7: a third element lists entries deleted while pending (already dropped).
        ([b"0-0", [(b"1-0", {b"n": b"1"})], [b"2-0"]], ("0-0", [("1-0", {b"n": b"1"})])),
        # Redis 6.2: a deleted entry comes back as nil (redis-py: (None, None)).
        ([b"5-0", [(None, None), (b"3-0", {b"n": b"3"})]], ("5-0", [("3-0", {b"n": b"3"})])),
        ([b"0-0", []], ("0-0", [])),
    ],
)
def test_autoclaimed(reply: list[Any], expected: tuple[str, list[Any]]) -> None:
    assert replies.autoclaimed(reply) == expected


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([], None),
        ([{"name": b"other", "pending": 1, "lag": 0}], None),
        ([{"name": b"workers", "pending": 3, "lag": 7}], GroupInfo(3, 7)),
        ([{"name": b"workers", "pending": 3}], GroupInfo(3, None)),  # Redis < 7: no lag
        ([{"name": b"workers", "pending": 0, "lag": None}], GroupInfo(0, None)),
    ],
)
def test_group_info(groups: list[dict[str, Any]], expected: GroupInfo | None) -> None:
    assert replies.group_info(groups, "workers") == expected


def test_consumers() -> None:
    reply = [{"name": b"w1", "pending": 2, "idle": 1500, "inactive": 10}]
    assert replies.consumers(reply) == (ConsumerInfo("w1", 2, 1500),)


@pytest.mark.parametrize(
    ("message", "missing_group", "busy_group", "missing_stream"),
    [
        ("NOGROUP No such key '{q}:stream' or consumer group 'workers'", True, False, False),
        # Redis 6.2 wraps an error raised inside a script.
        (
            "ERR Error running script (call to f_x): @user_script:2: -NOGROUP No such key",
            True,
            False,
            False,
        ),
        ("BUSYGROUP Consumer Group name already exists", False, True, False),
        ("no such key", False, False, True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False, False, False),
    ],
)
def test_error_words(
    message: str, missing_group: bool, busy_group: bool, missing_stream: bool
) -> None:
    exc = ResponseError(message)
    assert replies.is_missing_group(exc) is missing_group
    assert replies.is_busy_group(exc) is busy_group
    assert replies.is_missing_stream(exc) is missing_stream


def test_entry_ms() -> None:
    assert replies.entry_ms(b"1700000000123-4") == 1_700_000_000_123


@pytest.mark.parametrize(
    ("error", "ran"),
    [
        # No connection: nothing was sent.
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."), False),
        (RedisTimeoutError("Timeout connecting to server"), False),
        (AuthenticationError("invalid username-password pair or user is disabled."), False),
        (BusyLoadingError("Redis is loading the dataset in memory"), False),
        # Redis answered with an error: it did not run the command (scripts check first).
        (ResponseError("NOPERM this user has no permissions to run the 'evalsha' command"), False),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
        # Sent, and no reply: it may have run.
        (RedisTimeoutError("Timeout reading from 127.0.0.1:6379"), True),
        (RedisConnectionError("Connection closed by server."), True),
        (RedisConnectionError("Error 32 while writing to socket. Broken pipe."), True),
    ],
)
def test_may_have_run(error: RedisError, ran: bool) -> None:
    assert replies.may_have_run(error) is ran


def test_enqueue_error_is_queue_full_at_maxmemory_else_unavailable() -> None:
    full = replies.enqueue_error("q", OutOfMemoryError("OOM command not allowed"))
    assert isinstance(full, QueueFull)
    assert (full.backlog, full.limit, full.maybe_enqueued) == (None, None, False)
    lost = replies.enqueue_error("q", RedisTimeoutError("Timeout reading from h:6379"))
    assert isinstance(lost, QueueUnavailable)
    assert (lost.reason, lost.maybe_enqueued) == ("TimeoutError: Timeout reading from h:6379", True)
    assert str(lost) == (
        "queue 'q' is unavailable: TimeoutError: Timeout reading from h:6379; "
        "it may have been enqueued"
    )
