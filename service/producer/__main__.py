"""Enqueue emails from the shell.

    python -m service.producer --to a@example.com --subject Hi --text "Hello"
    python -m service.producer --jsonl < tasks.jsonl      # one EmailTask as JSON per line
    python -m service.producer --to a@example.com --subject Hi --text "Later" --delay 3600
    python -m service.producer --to a@example.com --subject Invoice --text "Attached." \
        --attach invoice.pdf --inline logo@shop=logo.png --html '<img src="cid:logo@shop">'

Reads `REDIS_URL` and `EMAIL_QUEUE` like the worker, and `MAX_EMAIL_BYTES`. In --jsonl input an
attachment's `content` is base64. Prints one task id per line. Every task is
validated before anything is enqueued: one bad task (exit code 2) enqueues nothing. When the
queue is full (exit code 1), the ids of the batches of 1,000 already enqueued are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import ValidationError

from ..errors import ConfigError, EnqueueError
from ..settings import QueueSettings, load_settings
from ..task import EmailTask
from . import DEFAULT_MAX_BACKLOG, Producer

_BATCH = 1_000


class UsageError(Exception):
    """Bad input; the message is printed as is and the exit code is 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 enqueued, 1 Redis failure or full, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(QueueSettings)
        if notice := settings.local_stack_notice():
            print(notice, file=sys.stderr)
        tasks = _read_tasks(args)
        schedule = _schedule(args)
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    task_ids: list[str] = []
    try:
        asyncio.run(_enqueue(settings, args, tasks, schedule, task_ids))
    except ValueError as exc:  # a delay or send_at out of range, or an email too large:
        # found before anything was sent
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EnqueueError as exc:  # full, or Redis unreachable: the message says which
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.write("".join(f"{task_id}\n" for task_id in task_ids))
    return 0


async def _enqueue(
    settings: QueueSettings,
    args: argparse.Namespace,
    tasks: list[EmailTask],
    schedule: dict[str, Any],
    task_ids: list[str],
) -> None:
    """Enqueue `tasks`, appending to `task_ids` as batches land (printed even on failure)."""
    url, queue = settings.redis_url.get_secret_value(), args.queue or settings.email_queue
    max_backlog = args.max_backlog or None
    async with Producer.from_url(
        url, queue=queue, max_backlog=max_backlog, max_email_bytes=settings.max_email_bytes
    ) as producer:
        if args.idempotency_key is not None:
            key = args.idempotency_key
            task_ids.append(await producer.enqueue(tasks[0], idempotency_key=key, **schedule))
            return
        for start in range(0, len(tasks), _BATCH):
            task_ids += await producer.enqueue_many(tasks[start : start + _BATCH], **schedule)


def _read_tasks(args: argparse.Namespace) -> list[EmailTask]:
    if not args.jsonl:
        return [_task_from_args(args)]
    if args.idempotency_key is not None:
        raise UsageError("--idempotency-key applies to one task, not to --jsonl")
    tasks = _read_jsonl(sys.stdin)
    if args.priority is None:
        return tasks
    # A line's own "priority" wins; the option is the default for the others.
    return [
        task if "priority" in task.model_fields_set else task.model_copy(update=_priority(args))
        for task in tasks
    ]


def _priority(args: argparse.Namespace) -> dict[str, Any]:
    return {"priority": args.priority} if args.priority is not None else {}


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    if args.send_at is None:
        return {} if args.delay is None else {"delay": args.delay}
    try:
        send_at = datetime.fromisoformat(args.send_at)
    except ValueError:
        raise UsageError(f"--send-at {args.send_at!r}: not an ISO 8601 date and time") from None
    return {"send_at": send_at, "delay": args.delay}


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
        "tags": args.tag,
        "attachments": [_file(path) for path in args.attach]
        + [_inline(item) for item in args.inline],
        **_priority(args),
    }
    return _validate(fields, where="")


def _file(path: str, content_id: str | None = None) -> dict[str, Any]:
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read: {exc.strerror}") from None
    return {
        "filename": Path(path).name,
        "content": content,
        "content_type": mimetypes.guess_type(path)[0] or "application/octet-stream",
        "content_id": content_id,
    }


def _inline(item: str) -> dict[str, Any]:
    content_id, sep, path = item.partition("=")
    if not sep:
        raise UsageError(f"--inline {item!r}: expected CONTENT_ID=PATH")
    return _file(path, content_id)


def _read_jsonl(stream: TextIO) -> list[EmailTask]:
    tasks = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"line {number}: not JSON: {exc}") from None
        tasks.append(_validate(line, where=f"line {number}: "))
    if not tasks:
        raise UsageError("no tasks on standard input")
    return tasks


def _validate(fields: dict[str, Any] | str, where: str) -> EmailTask:
    """A task from the options, or from a line of JSON (where bytes are base64)."""
    try:
        if isinstance(fields, str):
            return EmailTask.model_validate_json(fields)
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
    parser.add_argument(
        "--tag", action="append", default=[], help="label for logs and dead letters (repeatable)"
    )
    parser.add_argument(
        "--attach", action="append", default=[], metavar="PATH", help="attach a file (repeatable)"
    )
    parser.add_argument(
        "--inline",
        action="append",
        default=[],
        metavar="CONTENT_ID=PATH",
        help="an image the HTML shows as cid:CONTENT_ID (repeatable)",
    )
    parser.add_argument(
        "--priority",
        choices=("high", "normal", "low"),
        help="the task's lane: high (transactional), normal (default), low (bulk); with "
        "--jsonl, for lines that set none",
    )
    parser.add_argument("--delay", type=float, metavar="SECONDS", help="send this much later")
    parser.add_argument(
        "--send-at", metavar="ISO8601", help="send at this time, with its offset (...+00:00)"
    )
    parser.add_argument(
        "--idempotency-key", help="enqueue nothing if this key was used in the last 24 hours"
    )
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=DEFAULT_MAX_BACKLOG,
        help=f"refuse when this many tasks wait (default {DEFAULT_MAX_BACKLOG:,}; 0: no limit)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
