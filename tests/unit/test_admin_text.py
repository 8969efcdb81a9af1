"""The admin CLI's pure parts: text made inert for a terminal, and its argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from service.admin.arguments import (
    dead_letter_id,
    dead_letter_start,
    idle_seconds,
    list_limit,
    queue_name,
    worker_name,
)
from service.admin.tables import printable, table
from service.admin.views import dead_show_text, health_text


@pytest.mark.parametrize(
    ("text", "shown", "as_json"),
    [
        ("plain ascii, café, 日本, emoji 👍🏽", None, None),  # None: unchanged
        ("", None, None),
        ("back\\slash", None, None),  # for people: left as it is
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", "\\u001b[31mred\\u001b[0m"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07", "\\u001b]0;title\\u0007"),
        ("a\r\nb\tc\x00", "a\\r\\nb\\tc\\x00", "a\\u000d\\u000ab\\u0009c\\u0000"),
        ("\x7f\x80\x9b\x9f\xa0", "\\x7f\\x80\\x9b\\x9f\xa0", "\\u007f\\u0080\\u009b\\u009f\xa0"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029", "line\\u2028para\\u2029"),
        ("\u202egnp.exe", "\\u202egnp.exe", "\\u202egnp.exe"),
        (
            "\u2066\u2067\u2068\u2069\u200e\u200f\u061c",
            "\\u2066\\u2067\\u2068\\u2069\\u200e\\u200f\\u061c",
            "\\u2066\\u2067\\u2068\\u2069\\u200e\\u200f\\u061c",
        ),
        ("zero\u200bwidth\u200djoiner", None, None),  # shown, not acted on
    ],
)
def test_printable(text: str, shown: str | None, as_json: str | None) -> None:
    assert printable(text) == (text if shown is None else shown)
    assert printable(text, json=True) == (text if as_json is None else as_json)


def test_table_cells_are_printable() -> None:
    assert table(["name", "n"], [["a\x1b[2Jb", 1]]) == (
        "name       n\n---------  -\na\\x1b[2Jb  1\n"
    )


Check = Callable[[str], object]


@pytest.mark.parametrize(
    ("check", "text", "value"),
    [
        (dead_letter_id, "1700000000000-0", "1700000000000-0"),
        (dead_letter_id, "01-002", "1-2"),
        (dead_letter_id, "18446744073709551615-18446744073709551615", None),  # the largest: kept
        (dead_letter_start, "1700000000000", "1700000000000"),
        (dead_letter_start, "1700000000000-3", "1700000000000-3"),
        (list_limit, "1", 1),
        (list_limit, "100000", 100_000),
        (list_limit, " 7 ", 7),
        (idle_seconds, "0", 0.0),
        (idle_seconds, "0.05", 0.05),
        (idle_seconds, "315360000", 315_360_000.0),
        (worker_name, "host-12-a1b2c3", None),
        (worker_name, "email-worker@3", None),
        (queue_name, "emails", None),
    ],
)
def test_good_values(check: Check, text: str, value: object) -> None:
    assert check(text) == (text if value is None else value)


@pytest.mark.parametrize(
    ("check", "text", "message"),
    [
        (dead_letter_id, "zzz", "'zzz' is not a dead-letter id"),
        (dead_letter_id, "1", "'1' is not a dead-letter id"),  # XRANGE and XDEL read it apart
        (dead_letter_id, "1-", "'1-' is not"),
        (dead_letter_id, "-1", "'-1' is not"),
        (dead_letter_id, "+", "'+' is not"),
        (dead_letter_id, "1-0\n", "'1-0\\n' is not"),
        (dead_letter_id, "\u0661-\u0660", "is not a dead-letter id"),  # Arabic-Indic digits
        (dead_letter_id, "18446744073709551616-0", "is not a dead-letter id"),
        (dead_letter_id, "0-18446744073709551616", "is not a dead-letter id"),
        (dead_letter_start, "zzz", "'zzz' is neither a dead-letter id"),
        (dead_letter_start, "-", "'-' is neither"),
        (dead_letter_start, "18446744073709551616", "is neither"),
        (list_limit, "0", "from 1 to 100,000, not '0'"),
        (list_limit, "-1", "not '-1'"),
        (list_limit, "100001", "not '100001'"),
        (list_limit, "1.5", "not '1.5'"),
        (list_limit, "x", "not 'x'"),
        (idle_seconds, "nan", "from 0 to 315,360,000 (ten years), not 'nan'"),
        (idle_seconds, "inf", "not 'inf'"),
        (idle_seconds, "-5", "not '-5'"),
        (idle_seconds, "-0.001", "not '-0.001'"),
        (idle_seconds, "1e308", "not '1e308'"),
        (idle_seconds, "315360001", "not '315360001'"),
        (idle_seconds, "", "not ''"),
        (worker_name, "", "a worker name is 1 to 255 characters"),
        (worker_name, "a b", "not 'a b'"),
        (worker_name, "a\x1bb", "not 'a\\x1bb'"),
        (worker_name, "a\u202eb", "not 'a\\u202eb'"),
        (worker_name, "x" * 256, "1 to 255 characters"),
        (queue_name, "", "'' is not a valid queue name"),
        (queue_name, "bad{name}", "'bad{name}' is not a valid queue name"),
    ],
)
def test_bad_values(check: Check, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        check(text)
    assert message in str(refused.value)


def test_dead_show_names_an_attached_file_without_printing_it() -> None:
    shown = dead_show_text({"v": "2", "a0": "\x1b[2J" + "x" * 5000, "dead_reason": "550"})
    assert "a0: (an attached file, about 5,004 bytes)" in shown
    assert "xxxx" not in shown
    assert "dead_reason: 550" in shown


def test_health_counts_as_failed_only_what_used_an_attempt_or_was_given_up() -> None:
    worker = {
        "consumer": "w",
        "live": True,
        "state": "sending",
        "state_for_s": 1.0,
        "age_s": 0.1,
        "host": "h",
        "pid": 1,
        "outcomes": {
            "sent": 7,
            "held": 50,
            "requeued": 2,
            "throttled": 3,
            "retry": 4,
            "dead_letter": 1,
        },
    }
    text = health_text({"workers": [worker], "healthy": True, "reason": ""})
    row = text.splitlines()[2].split()
    assert row[5:7] == ["7", "5"]  # sent, failed (retry + dead_letter)
