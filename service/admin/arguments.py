"""The admin CLI's arguments: its parser, and a checked type for every value it takes.

A value that cannot be right is refused here, before Redis is asked anything, as a usage error
naming the argument (exit 2). Passed on, Redis would refuse it as a failure of its own ("Redis
failed", exit 1), or worse, accept it: an incomplete id such as `1700000000000` is read by XRANGE
as the first entry of that millisecond but by XDEL as `1700000000000-0`.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from typing import Final

from ..keys import validate_queue_name
from ..status import is_task_id
from .tables import printable

__all__ = [
    "MAX_IDLE_SECONDS",
    "MAX_LIST_LIMIT",
    "dead_letter_id",
    "dead_letter_start",
    "idle_seconds",
    "list_limit",
    "parser",
    "queue_name",
    "task_words",
    "worker_name",
]

# A page of `dead list` is read in one XRANGE; --after pages through more.
MAX_LIST_LIMIT: Final = 100_000
# Ten years: longer means nothing for an idle consumer, and stays finite in milliseconds.
MAX_IDLE_SECONDS: Final = 10 * 365 * 86_400
_MAX_WORKER_NAME: Final = 255
_U64_MAX: Final = 2**64 - 1
# ASCII digits only: `\d` would take other scripts' digits, which Redis does not.
_ENTRY_ID: Final = re.compile(r"([0-9]+)-([0-9]+)")
_MILLISECONDS: Final = re.compile(r"[0-9]+")


def dead_letter_id(text: str) -> str:
    """A complete stream entry id (`ms-seq`), written the way Redis writes it."""
    match = _ENTRY_ID.fullmatch(text)
    if match is None or not _fits(match[1], match[2]):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dead-letter id (two numbers joined by '-', like 1700000000000-0)"
        )
    return f"{int(match[1])}-{int(match[2])}"


def dead_letter_start(text: str) -> str:
    """Where a listing starts: a dead-letter id, or a time in milliseconds since the epoch."""
    if _MILLISECONDS.fullmatch(text) and _fits(text):
        return str(int(text))
    try:
        return dead_letter_id(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a dead-letter id (like 1700000000000-0) nor a time in "
            "milliseconds since the epoch"
        ) from None


def task_words(words: Sequence[str]) -> tuple[str, str]:
    """`task ID` or `task cancel ID`: ("status" or "cancel", the task id); ValueError naming
    what is wrong."""
    if len(words) == 2 and words[0] == "cancel":
        action, task_id = "cancel", words[1]
    elif len(words) == 1:
        action, task_id = "status", words[0]
    else:
        raise ValueError("give a task id, or 'cancel' and a task id")
    if not is_task_id(task_id):
        raise ValueError(f"{task_id!r} is not a task id (32 lowercase hex characters)")
    return action, task_id


def list_limit(text: str) -> int:
    """How many dead letters to list: a whole number from 1 to `MAX_LIST_LIMIT`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(
            f"give a whole number from 1 to {MAX_LIST_LIMIT:,}, not {text!r}"
        )
    return value


def idle_seconds(text: str) -> float:
    """A consumer's idle time: a number of seconds from 0 to `MAX_IDLE_SECONDS`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_IDLE_SECONDS:  # false for nan too
        raise argparse.ArgumentTypeError(
            f"give a number of seconds from 0 to {MAX_IDLE_SECONDS:,} (ten years), not {text!r}"
        )
    return value


def worker_name(text: str) -> str:
    """A worker's consumer name as `admin health` shows it: no blanks, no control characters."""
    blank = any(character.isspace() for character in text)
    if blank or printable(text) != text or not 1 <= len(text) <= _MAX_WORKER_NAME:
        raise argparse.ArgumentTypeError(
            f"a worker name is 1 to {_MAX_WORKER_NAME} characters without spaces or control "
            f"characters, not {text!r}"
        )
    return text


def queue_name(text: str) -> str:
    """A queue name (see `service.keys.validate_queue_name`)."""
    try:
        return validate_queue_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fits(*numbers: str) -> bool:
    """Each part of a stream id is an unsigned 64-bit number in Redis."""
    return all(int(number) <= _U64_MAX for number in numbers)


def parser() -> argparse.ArgumentParser:
    """The command line: `python -m service.admin [--queue Q] [--json] COMMAND ...`.

    `--queue` and `--json` are taken before the command, between its words or after it; the
    last one given wins.
    """
    top = argparse.ArgumentParser(
        prog="python -m service.admin", description="Look at an email queue and repair it."
    )
    _common_options(top, default_queue=None, default_json=False)
    # Below the top, an option not given leaves the value read above (SUPPRESS: no default).
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, default_queue=argparse.SUPPRESS, default_json=argparse.SUPPRESS)

    commands = top.add_subparsers(dest="group", required=True)
    commands.add_parser("stats", parents=[common], help="sizes, lag and consumers").set_defaults(
        command="stats"
    )
    health = commands.add_parser(
        "health", parents=[common], help="workers' heartbeats; exit 1 when none is live"
    )
    health.add_argument(
        "--worker", type=worker_name, help="only this consumer (e.g. a systemd instance's name)"
    )
    health.set_defaults(command="health")

    dead = commands.add_parser("dead", parents=[common], help="dead letters").add_subparsers(
        dest="action", required=True
    )
    listing = dead.add_parser("list", parents=[common], help="list dead letters, oldest first")
    listing.add_argument(
        "--limit",
        type=list_limit,
        default=20,
        help=f"at most this many, 1 to {MAX_LIST_LIMIT:,} (default 20)",
    )
    listing.add_argument(
        "--after",
        type=dead_letter_start,
        metavar="ID",
        help="start at this dead-letter id, or at this time in ms since the epoch",
    )
    listing.set_defaults(command="dead list")
    show = dead.add_parser("show", parents=[common], help="one dead letter, every field")
    show.add_argument("id", type=dead_letter_id, metavar="ID")
    show.set_defaults(command="dead show")
    for action, verb in (("requeue", "put back on the queue"), ("purge", "delete for good")):
        sub = dead.add_parser(action, parents=[common], help=f"{verb}: ids, or --all")
        sub.add_argument("ids", type=dead_letter_id, nargs="*", metavar="ID")
        sub.add_argument(
            "--all",
            action="store_true",
            help="every dead letter present when it starts (each at most once)",
        )
        if action == "purge":
            sub.add_argument("--yes", action="store_true", help="confirm --all")
        sub.set_defaults(command=f"dead {action}")

    task = commands.add_parser(
        "task", parents=[common], help="a task's status: task ID; cancel it: task cancel ID"
    )
    task.add_argument("words", nargs="+", metavar="[cancel] ID", help="a task id (32 hex)")
    task.set_defaults(command="task")

    consumers = commands.add_parser(
        "consumers", parents=[common], help="consumers of the queue"
    ).add_subparsers(dest="action", required=True)
    prune = consumers.add_parser(
        "prune", parents=[common], help="remove consumers that are gone and own nothing"
    )
    prune.add_argument(
        "--idle-seconds",
        type=idle_seconds,
        default=3600.0,
        help="idle at least this long (default 3600)",
    )
    prune.set_defaults(command="consumers prune")
    return top


def _common_options(
    parser: argparse.ArgumentParser, *, default_queue: object, default_json: object
) -> None:
    parser.add_argument(
        "--queue",
        type=queue_name,
        default=default_queue,
        help="queue name (default: $EMAIL_QUEUE or 'emails')",
    )
    parser.add_argument(
        "--json", action="store_true", default=default_json, help="JSON output for scripts"
    )
