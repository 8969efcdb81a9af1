"""`python -m service.admin`: look at a queue and repair it.

    python -m service.admin stats                    # sizes, lag, consumers
    python -m service.admin health [--worker NAME]   # exit 0 when a worker (that one) is live
    python -m service.admin dead list [--limit N] [--after ID]   # dead letters, oldest first
    python -m service.admin dead show ID
    python -m service.admin dead requeue ID... | --all      # --all: the letters present at start
    python -m service.admin dead purge ID... | --all --yes
    python -m service.admin consumers prune [--idle-seconds N]

Reads `REDIS_URL` and `EMAIL_QUEUE` like the worker (`--queue`, before or after the command,
overrides). Tables for people, with stored text's control characters escaped; `--json` for
scripts; progress of `--all` on stderr. Exit codes: 0 done, 1 Redis failed (or `health`: no
live worker), 2 bad usage (naming the argument) or no such dead letter.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis.exceptions import RedisError

from ..connection import connect_redis
from ..errors import ConfigError
from ..keys import QueueKeys
from ..settings import QueueSettings, load_settings
from ..store import QueueStore
from . import views
from .arguments import parser, task_words
from .queue import BulkResult, DeadLetter, QueueAdmin
from .tables import printable

# A bulk action reports its progress on stderr at most this often (and once more at the end).
_PROGRESS_EVERY_S = 1.0


class UsageError(Exception):
    """Bad input; the message is printed (control characters escaped) and the exit code is 2."""


class Unhealthy(Exception):
    """`health` found no live worker; `output` is the report, printed anyway; exit code 1."""

    def __init__(self, reason: str, output: str) -> None:
        super().__init__(reason)
        self.output = output


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit code."""
    args = parser().parse_args(argv)  # a bad argument exits 2 here, naming it
    try:
        settings = load_settings(QueueSettings)
        if notice := settings.local_stack_notice():
            print(notice, file=sys.stderr)
        keys = QueueKeys(settings.email_queue if args.queue is None else args.queue)
    except (ConfigError, ValueError) as exc:
        _error(str(exc))
        return 2
    try:
        output = asyncio.run(
            _run(settings.redis_url.get_secret_value(), keys, settings.task_status_ttl, args)
        )
    except Unhealthy as exc:
        sys.stdout.write(exc.output)
        print(f"unhealthy: {printable(str(exc))}", file=sys.stderr)
        return 1
    except UsageError as exc:
        _error(str(exc))
        return 2
    except (RedisError, OSError) as exc:
        _error(f"Redis failed: {type(exc).__name__}: {exc}")
        return 1
    sys.stdout.write(output)
    return 0


def _error(message: str) -> None:
    print(f"error: {printable(message)}", file=sys.stderr)


async def _run(url: str, keys: QueueKeys, status_ttl: timedelta, args: argparse.Namespace) -> str:
    redis = connect_redis(url)
    try:
        admin = QueueAdmin(QueueStore(redis, keys, status_ttl=status_ttl))
        run, as_text = _COMMANDS[args.command]
        result = await run(admin, args)
    finally:
        await redis.aclose()
    if args.json:
        output = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        output = as_text(result)
    if args.command == "health" and not result["healthy"]:
        raise Unhealthy(result["reason"], output)
    return output


async def _stats(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    return asdict(await admin.stats())


async def _health(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    workers = await admin.workers()
    if args.worker is not None:
        mine = [w for w in workers if w.consumer == args.worker]
        healthy = any(w.live for w in mine)
        reason = "" if healthy else f"worker {args.worker!r} has no recent heartbeat"
    else:
        healthy = any(w.live for w in workers)
        reason = "" if healthy else "no worker has a recent heartbeat"
    return {"healthy": healthy, "reason": reason, "workers": [asdict(w) for w in workers]}


async def _dead_list(admin: QueueAdmin, args: argparse.Namespace) -> list[dict[str, Any]]:
    start = "-" if args.after is None else args.after  # "-": the oldest
    letters = await admin.dead_letters(limit=args.limit, after=start)
    return [_letter_summary(letter) for letter in letters]


async def _dead_show(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    letter = await admin.dead_letter(args.id)
    if letter is None:
        raise UsageError(f"no dead letter {args.id!r}")
    return {"dead_id": letter.dead_id, **letter.fields}


async def _dead_requeue(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    _one_of_ids_or_all(args)
    if args.all:
        return _bulk("requeued", await admin.requeue_all(_ProgressLines("requeue")))
    requeued = await admin.requeue(_distinct(args.ids))
    missing = [dead_id for dead_id, new_id in requeued.items() if new_id is None]
    if missing:
        raise UsageError(f"no dead letter {', '.join(missing)} (the others were requeued)")
    return {"requeued": len(requeued), "entries": requeued}


async def _dead_purge(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    _one_of_ids_or_all(args)
    if args.all:
        if not args.yes:
            raise UsageError("purging every dead letter deletes them for good: add --yes")
        return _bulk("purged", await admin.purge_all(_ProgressLines("purge")))
    return {"purged": await admin.purge(_distinct(args.ids))}


async def _consumers_prune(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    removed = await admin.prune_consumers(min_idle_ms=int(args.idle_seconds * 1000))
    return {"removed": removed}


async def _task(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    try:
        action, task_id = task_words(args.words)
    except ValueError as exc:
        raise UsageError(f"task: {exc}") from None
    if action == "cancel":
        return (await admin.cancel(task_id)).to_json()
    return (await admin.task_status(task_id)).to_json()


class _ProgressLines:
    """A bulk action's progress on stderr: the letters it works through, then how far it got."""

    def __init__(self, verb: str) -> None:
        self._verb = verb
        self._last_line = 0.0

    def __call__(self, seen: int, present: int) -> None:
        now = time.monotonic()
        if seen == 0:
            line = f"{present:,} dead letters present at the start; newer ones are left alone"
        elif seen == present or now - self._last_line >= _PROGRESS_EVERY_S:
            line = f"{seen:,} of {present:,}"
        else:
            return
        self._last_line = now
        print(f"{self._verb}: {line}", file=sys.stderr, flush=True)


def _bulk(verb: str, result: BulkResult) -> dict[str, Any]:
    return {verb: result.done, "present_at_start": result.present_at_start}


def _distinct(ids: Sequence[str]) -> list[str]:
    """Each id once, in the order given: naming a letter twice acts on it once."""
    return list(dict.fromkeys(ids))


def _letter_summary(letter: DeadLetter) -> dict[str, Any]:
    dead_at = letter.dead_at_ms
    return {
        "dead_id": letter.dead_id,
        "dead_at": _iso(dead_at) if dead_at is not None else None,
        "task_id": letter.task_id,
        "attempts": letter.fields.get("dead_attempts"),
        "recipients": letter.recipients,
        "reason": letter.reason,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _one_of_ids_or_all(args: argparse.Namespace) -> None:
    if bool(args.ids) == bool(args.all):
        raise UsageError("give dead-letter ids or --all (not both)")


Run = Callable[[QueueAdmin, argparse.Namespace], Awaitable[Any]]
# Each command: what it does, and how its result reads for people.
_COMMANDS: dict[str, tuple[Run, Callable[[Any], str]]] = {
    "stats": (_stats, views.stats_text),
    "health": (_health, views.health_text),
    "dead list": (_dead_list, views.dead_list_text),
    "dead show": (_dead_show, views.dead_show_text),
    "dead requeue": (_dead_requeue, views.count_text),
    "dead purge": (_dead_purge, views.count_text),
    "consumers prune": (_consumers_prune, views.prune_text),
    "task": (_task, views.task_text),
}


if __name__ == "__main__":
    sys.exit(main())
