"""Enqueue emails from the shell.

    python -m service.producer --to a@example.com --subject Hi --text "Hello"
    python -m service.producer --jsonl < tasks.jsonl      # one EmailTask as JSON per line

Reads `REDIS_URL` and `EMAIL_QUEUE` like the worker. Prints one task id per line. Every task is
validated before anything is enqueued: one bad task (exit code 2) enqueues nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson
from pydantic import ValidationError
from redis.exceptions import RedisError

from ..errors import ConfigError
from ..settings import QueueSettings, load_settings
from ..task import EmailTask
from . import Producer

_BATCH = 1_000


class UsageError(Exception):
    """Bad input; the message is printed as is and the exit code is 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 enqueued, 1 Redis failure, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(QueueSettings)
        tasks = _read_jsonl(sys.stdin) if args.jsonl else [_task_from_args(args)]
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    queue = args.queue or settings.email_queue
    try:
        task_ids = asyncio.run(_enqueue(settings.redis_url.get_secret_value(), queue, tasks))
    except (RedisError, OSError) as exc:
        print(f"error: could not enqueue on Redis: {type(exc).__name__}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(f"{task_id}\n" for task_id in task_ids))
    return 0


async def _enqueue(url: str, queue: str, tasks: list[EmailTask]) -> list[str]:
    async with Producer.from_url(url, queue=queue) as producer:
        task_ids: list[str] = []
        for start in range(0, len(tasks), _BATCH):
            task_ids += await producer.enqueue_many(tasks[start : start + _BATCH])
        return task_ids


def _task_from_args(args: argparse.Namespace) -> EmailTask:
    if not args.to:
        raise UsageError("--to is required (or use --jsonl)")
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise UsageError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    fields: dict[str, Any] = {
        "to": args.to,
        "cc": args.cc,
        "bcc": args.bcc,
        "reply_to": args.reply_to,
        "sender": args.sender,
        "subject": args.subject,
        "text": args.text,
        "html": args.html,
        "headers": headers,
    }
    return _validate(fields, where="")


def _read_jsonl(stream: TextIO) -> list[EmailTask]:
    tasks = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not JSON: {exc}") from None
        tasks.append(_validate(fields, where=f"line {number}: "))
    if not tasks:
        raise UsageError("no tasks on standard input")
    return tasks


def _validate(fields: Any, where: str) -> EmailTask:
    try:
        return EmailTask.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'task'}: "
            f"{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors(include_url=False)
        )
        raise UsageError(f"{where}invalid task: {problems}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.producer", description="Put emails on the queue."
    )
    parser.add_argument("--queue", help="queue name (default: $EMAIL_QUEUE or 'emails')")
    parser.add_argument("--jsonl", action="store_true", help="read one JSON task per stdin line")
    parser.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    parser.add_argument("--cc", action="append", default=[], help="Cc recipient (repeatable)")
    parser.add_argument("--bcc", action="append", default=[], help="Bcc recipient (repeatable)")
    parser.add_argument("--reply-to", action="append", default=[], help="Reply-To address")
    parser.add_argument("--sender", help="From address (default: the worker's MAIL_FROM)")
    parser.add_argument("--subject", default="", help="subject line")
    parser.add_argument("--text", help="plain-text body")
    parser.add_argument("--html", help="HTML body")
    parser.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="extra header"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
