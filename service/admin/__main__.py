"""`python -m service.admin`: look at a queue and repair it.

    python -m service.admin stats                    # sizes, lag, consumers
    python -m service.admin health [--worker NAME]   # exit 0 when a worker (that one) is live
    python -m service.admin dead list [--limit N]    # dead letters, oldest first
    python -m service.admin dead show ID
    python -m service.admin dead requeue ID... | --all
    python -m service.admin dead purge ID... | --all --yes
    python -m service.admin consumers prune [--idle-seconds N]

Reads `REDIS_URL` and `EMAIL_QUEUE` like the worker (`--queue` overrides). Tables for people,
`--json` for scripts. Exit codes: 0 done, 1 Redis failed (or `health`: no live worker), 2 bad
usage or no such dead letter.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.exceptions import RedisError

from ..connection import connect_redis
from ..errors import ConfigError
from ..keys import QueueKeys
from ..settings import QueueSettings, load_settings
from ..store import QueueStore
from .queue import DeadLetter, QueueAdmin, QueueStats
from .tables import table

_BODY_PREVIEW_CHARS = 500


class UsageError(Exception):
    """Bad input; the message is printed as is and the exit code is 2."""


class Unhealthy(Exception):
    """`health` found no live worker; `output` is the report, printed anyway; exit code 1."""

    def __init__(self, reason: str, output: str) -> None:
        super().__init__(reason)
        self.output = output


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(QueueSettings)
        if notice := settings.local_stack_notice():
            print(notice, file=sys.stderr)
        keys = QueueKeys(args.queue or settings.email_queue)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        output = asyncio.run(_run(settings.redis_url.get_secret_value(), keys, args))
    except Unhealthy as exc:
        sys.stdout.write(exc.output)
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"error: Redis failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(output)
    return 0


async def _run(url: str, keys: QueueKeys, args: argparse.Namespace) -> str:
    redis = connect_redis(url)
    try:
        admin = QueueAdmin(QueueStore(redis, keys))
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
    if args.worker:
        mine = [w for w in workers if w.consumer == args.worker]
        healthy = any(w.live for w in mine)
        reason = "" if healthy else f"worker {args.worker!r} has no recent heartbeat"
    else:
        healthy = any(w.live for w in workers)
        reason = "" if healthy else "no worker has a recent heartbeat"
    return {"healthy": healthy, "reason": reason, "workers": [asdict(w) for w in workers]}


async def _dead_list(admin: QueueAdmin, args: argparse.Namespace) -> list[dict[str, Any]]:
    letters = await admin.dead_letters(limit=args.limit, after=args.after)
    return [_letter_summary(letter) for letter in letters]


async def _dead_show(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    letter = await admin.dead_letter(args.id)
    if letter is None:
        raise UsageError(f"no dead letter {args.id!r}")
    return {"dead_id": letter.dead_id, **letter.fields}


async def _dead_requeue(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    _one_of_ids_or_all(args)
    if args.all:
        return {"requeued": await admin.requeue_all()}
    requeued = await admin.requeue(args.ids)
    missing = [dead_id for dead_id, new_id in requeued.items() if new_id is None]
    if missing:
        raise UsageError(f"no dead letter {', '.join(missing)} (the others were requeued)")
    return {"requeued": len(requeued), "entries": requeued}


async def _dead_purge(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    _one_of_ids_or_all(args)
    if args.all:
        if not args.yes:
            raise UsageError("purging every dead letter deletes them for good: add --yes")
        return {"purged": await admin.purge_all()}
    return {"purged": await admin.purge(args.ids)}


async def _consumers_prune(admin: QueueAdmin, args: argparse.Namespace) -> dict[str, Any]:
    removed = await admin.prune_consumers(min_idle_ms=int(args.idle_seconds * 1000))
    return {"removed": removed}


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


def _stats_text(stats: dict[str, Any]) -> str:
    s = QueueStats(**{**stats, "consumers": ()})
    rows: list[tuple[str, object]] = [
        ("stream (waiting or being sent)", s.stream),
        ("  handed to a worker, unsettled", s.pending),
        ("  never handed out (lag)", s.lag),
        ("  oldest entry age (s)", s.oldest_age_s),
        ("delayed (retries, scheduled)", s.delayed),
        ("  next due in (s)", s.next_due_in_s),
        ("dead letters", s.dead),
    ]
    consumers = [(c["name"], c["pending"], c["idle_ms"] / 1000) for c in stats["consumers"]]
    return (
        f"queue {s.queue!r}\n\n"
        + table(["", "count"], rows)
        + "\n"
        + table(["consumer", "pending", "idle (s)"], consumers)
    )


def _health_text(result: dict[str, Any]) -> str:
    rows = [
        (
            w["consumer"],
            "live" if w["live"] else "dead",
            w["state"],
            w["state_for_s"],
            w["age_s"],
            w["outcomes"].get("sent", 0),
            sum(n for outcome, n in w["outcomes"].items() if outcome not in ("sent", "skipped")),
            f"{w['host']}:{w['pid']}",
        )
        for w in result["workers"]
    ]
    headers = ["worker", "", "state", "for (s)", "beat (s ago)", "sent", "failed", "host:pid"]
    verdict = "healthy\n" if result["healthy"] else f"unhealthy: {result['reason']}\n"
    return (table(headers, rows) if rows else "no worker heartbeats\n") + verdict


def _dead_list_text(letters: list[dict[str, Any]]) -> str:
    if not letters:
        return "no dead letters\n"
    rows = [
        (
            letter["dead_id"],
            letter["dead_at"],
            letter["task_id"],
            letter["attempts"],
            ", ".join(letter["recipients"])[:40],
            letter["reason"][:70],
        )
        for letter in letters
    ]
    return table(["id", "dead at", "task", "attempts", "recipients", "reason"], rows)


def _dead_show_text(record: dict[str, Any]) -> str:
    lines = []
    for name, value in record.items():
        lines.append(f"{name}: {_task_preview(value) if name == 'task' else value}")
    return "\n".join(lines) + "\n"


def _task_preview(payload: str) -> str:
    """The task JSON, indented, with long bodies cut (the whole is in --json)."""
    try:
        task = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:_BODY_PREVIEW_CHARS]
    if isinstance(task, dict):
        for body in ("text", "html"):
            value = task.get(body)
            if isinstance(value, str) and len(value) > _BODY_PREVIEW_CHARS:
                task[body] = value[:_BODY_PREVIEW_CHARS] + f"... ({len(value):,} characters)"
    return "\n  " + orjson.dumps(task, option=orjson.OPT_INDENT_2).decode().replace("\n", "\n  ")


def _count_text(result: dict[str, Any]) -> str:
    return "".join(f"{name}: {value}\n" for name, value in result.items() if name != "entries")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _one_of_ids_or_all(args: argparse.Namespace) -> None:
    if bool(args.ids) == bool(args.all):
        raise UsageError("give dead-letter ids or --all (not both)")


def _prune_text(result: dict[str, Any]) -> str:
    return "".join(f"removed {name}\n" for name in result["removed"]) or "nothing to remove\n"


Run = Callable[[QueueAdmin, argparse.Namespace], Awaitable[Any]]
# Each command: what it does, and how its result reads for people.
_COMMANDS: dict[str, tuple[Run, Callable[[Any], str]]] = {
    "stats": (_stats, _stats_text),
    "health": (_health, _health_text),
    "dead list": (_dead_list, _dead_list_text),
    "dead show": (_dead_show, _dead_show_text),
    "dead requeue": (_dead_requeue, _count_text),
    "dead purge": (_dead_purge, _count_text),
    "consumers prune": (_consumers_prune, _prune_text),
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--queue", help="queue name (default: $EMAIL_QUEUE or 'emails')")
    common.add_argument("--json", action="store_true", help="JSON output for scripts")
    parser = argparse.ArgumentParser(
        prog="python -m service.admin", description="Look at an email queue and repair it."
    )
    commands = parser.add_subparsers(dest="group", required=True)
    commands.add_parser("stats", parents=[common], help="sizes, lag and consumers").set_defaults(
        command="stats"
    )
    health = commands.add_parser(
        "health", parents=[common], help="workers' heartbeats; exit 1 when none is live"
    )
    health.add_argument("--worker", help="only this consumer (e.g. a systemd instance's name)")
    health.set_defaults(command="health")
    dead = commands.add_parser("dead", help="dead letters").add_subparsers(
        dest="action", required=True
    )
    listing = dead.add_parser("list", parents=[common], help="list dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.add_argument("--after", default="-", help="start at this dead-letter id")
    listing.set_defaults(command="dead list")
    show = dead.add_parser("show", parents=[common], help="one dead letter, every field")
    show.add_argument("id")
    show.set_defaults(command="dead show")
    for action, verb in (("requeue", "put back on the queue"), ("purge", "delete for good")):
        sub = dead.add_parser(action, parents=[common], help=f"{verb}: ids, or --all")
        sub.add_argument("ids", nargs="*", metavar="ID")
        sub.add_argument("--all", action="store_true", help="every dead letter")
        if action == "purge":
            sub.add_argument("--yes", action="store_true", help="confirm --all")
        sub.set_defaults(command=f"dead {action}")
    consumers = commands.add_parser("consumers", help="consumers of the queue").add_subparsers(
        dest="action", required=True
    )
    prune = consumers.add_parser(
        "prune", parents=[common], help="remove consumers that are gone and own nothing"
    )
    prune.add_argument(
        "--idle-seconds", type=float, default=3600.0, help="idle at least this long (default 3600)"
    )
    prune.set_defaults(command="consumers prune")
    return parser


if __name__ == "__main__":
    sys.exit(main())
