"""The priority lanes' pure parts: key names, the lane an entry names, the read order."""

from __future__ import annotations

from collections import Counter

import pytest

from service.keys import Lane, QueueKeys
from service.store import Entry, scripts
from service.store import lanes as store_lanes
from service.task import EmailTask
from service.wire import decode_entry, encode_entry
from service.worker import fate
from service.worker.lanes import LOW_TURN_EVERY, lane_order

KEYS = QueueKeys("q")


@pytest.mark.parametrize(
    ("lane", "key"),
    [("normal", "{q}:stream"), ("high", "{q}:stream:high"), ("low", "{q}:stream:low")],
)
def test_each_lane_is_a_stream_on_the_queue_hash_tag(lane: Lane, key: str) -> None:
    assert KEYS.lane(lane) == key


def test_scripts_declare_the_lanes_normal_high_low() -> None:
    assert KEYS.lanes == ("{q}:stream", "{q}:stream:high", "{q}:stream:low")


@pytest.mark.parametrize(
    ("value", "lane"),
    [
        (None, "normal"),
        (b"high", "high"),
        (b"low", "low"),
        (b"normal", "normal"),
        (b"HIGH", "normal"),
        (b"urgent", "normal"),
        (b"", "normal"),
    ],
)
def test_an_entry_lane_field_names_its_lane(value: bytes | None, lane: str) -> None:
    assert scripts.field_lane(value) == lane


@pytest.mark.parametrize(("priority", "field"), [("high", b"high"), ("low", b"low")])
def test_a_prioritised_task_carries_its_lane(priority: Lane, field: bytes) -> None:
    task = EmailTask(to="a@example.com", subject="s", text="t", priority=priority)
    fields = encode_entry(task, "0" * 32, 1)
    assert fields["lane"] == field
    assert scripts.NewTask("t", fields).lane == priority


def test_a_normal_task_is_written_as_before_lanes() -> None:
    task = EmailTask(to="a@example.com", subject="s", text="t")
    fields = encode_entry(task, "0" * 32, 1)
    assert "lane" not in fields
    assert b"priority" not in fields["task"]


def test_a_settle_writes_to_the_lane_the_entry_was_read_from() -> None:
    write = scripts.SettleWrite("1-0", "t", lane="low")
    assert scripts.settle(KEYS, write).keys[0] == "{q}:stream:low"
    assert scripts.settle(KEYS, scripts.SettleWrite("1-0", "t")).keys[0] == "{q}:stream"


@pytest.mark.parametrize(
    ("turn", "order"),
    [
        (0, ("high", "normal", "low")),
        (1, ("high", "normal", "low")),
        (3, ("high", "normal", "low")),
        (4, ("normal", "high", "low")),
        (5, ("high", "normal", "low")),
        (8, ("high", "normal", "low")),
        (9, ("low", "high", "normal")),
        (14, ("normal", "high", "low")),
        (19, ("low", "high", "normal")),
        (20, ("high", "normal", "low")),
    ],
)
def test_read_order_by_turn(turn: int, order: tuple[str, ...]) -> None:
    assert lane_order(turn) == order


def test_in_every_ten_reads_low_and_normal_each_go_first_once() -> None:
    for start in range(0, 100, 7):
        firsts = Counter(lane_order(turn)[0] for turn in range(start, start + LOW_TURN_EVERY))
        assert firsts == {"high": 8, "normal": 1, "low": 1}


def test_every_order_holds_every_lane() -> None:
    for turn in range(LOW_TURN_EVERY):
        assert sorted(lane_order(turn)) == ["high", "low", "normal"]


@pytest.mark.parametrize(
    ("lane", "field", "kept"),
    [
        ("high", None, b"high"),  # added to the lane without the field: it is written in
        ("low", b"low", b"low"),
        ("high", b"low", b"high"),  # the lane it was read from wins
        ("normal", None, None),  # written as before lanes
    ],
)
def test_a_retry_copy_and_a_dead_letter_name_the_lane_read_from(
    lane: Lane, field: bytes | None, kept: bytes | None
) -> None:
    task = EmailTask(to="a@example.com", subject="s", text="t")
    fields = {k.encode(): v for k, v in encode_entry(task, "0" * 32, 1).items()}
    if field is not None:
        fields[b"lane"] = field
    entry = Entry("1-0", fields, 1, lane)
    queued = decode_entry(fields)
    held = fate.hold(entry, queued, "stopping", due_ms=5)
    dead = fate.give_up(entry, queued, "550", consumer="w", now_ms=5)
    assert held.write.retry is not None
    assert dead.write.dead is not None
    assert held.write.retry.fields.get(b"lane") == kept
    assert dead.write.dead.get(b"lane") == kept
    assert held.write.lane == dead.write.lane == lane


def test_read_lanes_lays_out_the_lanes_in_reading_order() -> None:
    call = store_lanes.read_lanes(KEYS, ("low", "high", "normal"), "w1", 7)
    assert call.keys == ["{q}:stream:low", "{q}:stream:high", "{q}:stream"]
    assert call.args == ["workers", "w1", 7, 3]  # the normal lane is third


def test_read_lanes_reply_names_each_entry_lane() -> None:
    order: tuple[Lane, ...] = ("low", "high", "normal")
    found = [[2, b"5-0", [b"v", b"1", b"lane", b"high"]], [3, b"6-0", [b"v", b"1"]]]
    read = store_lanes.read_lanes_reply(KEYS, order, [found, []])
    assert read.entries == [
        Entry("5-0", {b"v": b"1", b"lane": b"high"}, 1, "high"),
        Entry("6-0", {b"v": b"1"}, 1, "normal"),
    ]
    assert read.tails == {}
    empty = store_lanes.read_lanes_reply(KEYS, order, [[], [b"0-0", b"9-1", b"8-0"]])
    assert empty.entries == []
    assert empty.tails == {"{q}:stream:low": "0-0", "{q}:stream:high": "9-1", "{q}:stream": "8-0"}
