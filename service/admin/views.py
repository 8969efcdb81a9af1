"""How each admin command's result reads for people (pure functions of the `--json` values).

Every stored value passes through `printable` (in `table`, or here directly): dead letters and
consumer names hold whatever producers, SMTP servers and Redis clients put there.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from .queue import QueueStats, SendLimits
from .tables import printable, table

__all__ = [
    "count_text",
    "dead_list_text",
    "dead_show_text",
    "health_text",
    "prune_text",
    "stats_text",
]

_BODY_PREVIEW_CHARS: Final = 500
# Outcomes that are not failures: sent, a copy already sent, and those put back without using an
# attempt (a pause, a "slow down", the quota or a domain's limit).
_NOT_FAILED: Final = ("sent", "skipped", "requeued", "throttled", "held")


def stats_text(stats: dict[str, Any]) -> str:
    """`stats`: the queue's places, then its consumers."""
    s = QueueStats(**{**stats, "consumers": (), "limits": None, "relays": (), "relay_limits": ()})
    lanes = [(f"  {lane} priority lane", count) for lane, count in s.lanes.items()]
    rows: list[tuple[str, object]] = [
        ("stream (waiting or being sent)", s.stream),
        *lanes,
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
        + _limits_text(stats.get("limits"))
        + _relays_text(stats.get("relays", []))
        + _relay_limits_text(stats.get("relay_limits", []))
        + _domain_limits_text(stats.get("domain_limits", []), stats.get("set_aside", 0))
        + table(["consumer", "pending", "idle (s)"], consumers)
    )


def _relays_text(relays: list[dict[str, Any]]) -> str:
    """The SMTP relays' rows, as the live workers report them (nothing when none does)."""
    if not relays:
        return ""
    rows = [
        (r["name"], r["up"], r["down"], r["sent"], r["failed"], r["unavailable"]) for r in relays
    ]
    headers = ["relay", "up in", "down in", "sent", "failed", "unavailable"]
    return table(headers, rows) + "\n"


def _relay_limits_text(relays: list[dict[str, Any]]) -> str:
    """The relays' own limits (nothing when no relay has any)."""
    if not relays:
        return ""
    rows = [
        (
            r["name"],
            r["rate_limit_per_s"] or "none",
            r["burst"],
            r["effective_rate_per_s"],
            f"{r['quota_used']} of {r['quota']} per {r['quota_window_s']:g} s"
            if r["quota"]
            else "none",
        )
        for r in relays
    ]
    headers = ["relay limits", "rate limit (/s)", "burst", "effective now (/s)", "quota used"]
    return table(headers, rows) + "\n"


def _limits_text(limits: dict[str, Any] | None) -> str:
    """The shared send limits' rows (nothing when none is configured)."""
    if limits is None:
        return ""
    limit = SendLimits(**limits)
    quota = (
        f"{limit.quota_used} of {limit.quota} per {limit.quota_window_s:g} s"
        if limit.quota
        else "none"
    )
    rows: list[tuple[str, object]] = [
        ("rate limit (/s)", limit.rate_limit_per_s if limit.rate_limit_per_s else "none"),
        ("  burst", limit.burst),
        ("  effective now (/s)", limit.effective_rate_per_s),
        ("quota used", quota),
        ("stream drains in (s)", limit.drain_forecast_s),
    ]
    return table(["send limits", ""], rows) + "\n"


def _domain_limits_text(domains: list[dict[str, Any]], set_aside: int) -> str:
    """The per-domain limits' rows (nothing when none is configured)."""
    if not domains:
        return ""
    rows = [(d["domain"], d["limit"], d["next_free_s"], d["set_aside"]) for d in domains]
    headers = ["domain limits", "limit", "next free slot in (s)", "set aside"]
    return table(headers, rows) + f"set aside until their domain's slot: {set_aside}\n\n"


def health_text(result: dict[str, Any]) -> str:
    """`health`: one row per worker heartbeat, then the verdict."""
    rows = [
        (
            w["consumer"],
            "live" if w["live"] else "dead",
            w["state"],
            w["state_for_s"],
            w["age_s"],
            w["outcomes"].get("sent", 0),
            sum(n for outcome, n in w["outcomes"].items() if outcome not in _NOT_FAILED),
            f"{w['host']}:{w['pid']}",
        )
        for w in result["workers"]
    ]
    headers = ["worker", "", "state", "for (s)", "beat (s ago)", "sent", "failed", "host:pid"]
    verdict = "healthy\n" if result["healthy"] else f"unhealthy: {result['reason']}\n"
    return (table(headers, rows) if rows else "no worker heartbeats\n") + verdict


def dead_list_text(letters: list[dict[str, Any]]) -> str:
    """`dead list`: one row per letter, recipients and reason cut to fit."""
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


def dead_show_text(record: dict[str, Any]) -> str:
    """`dead show`: every field, one per line; the task as indented JSON, long bodies cut."""
    lines = []
    for name, value in record.items():
        if name == "task":
            shown = _task_preview(value)
        elif _ATTACHMENT_FIELD.fullmatch(name):  # a file (wire format 2): no terminal text
            shown = f"(an attached file, about {len(value.encode()):,} bytes)"
        else:
            shown = printable(value)
        lines.append(f"{printable(name)}: {shown}")
    return "\n".join(lines) + "\n"


_ATTACHMENT_FIELD: Final = re.compile(r"a[0-9]{1,2}")


def _task_preview(payload: str) -> str:
    """The task JSON, indented, with long bodies cut (the whole is in --json)."""
    try:
        task = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return printable(_cut(payload))
    if isinstance(task, dict):
        for body in ("text", "html"):
            value = task.get(body)
            if isinstance(value, str):
                task[body] = _cut(value)
    # JSON escapes control characters but not every character a terminal acts on (U+2028, the
    # bidirectional controls); its line breaks are all its own.
    lines = orjson.dumps(task, option=orjson.OPT_INDENT_2).decode().split("\n")
    return "".join(f"\n  {printable(line, json=True)}" for line in lines)


def _cut(text: str) -> str:
    if len(text) <= _BODY_PREVIEW_CHARS:
        return text
    return text[:_BODY_PREVIEW_CHARS] + f"... ({len(text):,} characters)"


def count_text(result: dict[str, Any]) -> str:
    """`dead requeue` and `dead purge`: how many (of how many present, for `--all`)."""
    verb, done = next(iter(result.items()))
    if "present_at_start" in result:
        return f"{verb}: {done:,} (of {result['present_at_start']:,} present at the start)\n"
    return f"{verb}: {done:,}\n"


def prune_text(result: dict[str, Any]) -> str:
    """`consumers prune`: each consumer removed."""
    removed = result["removed"]
    return "".join(f"removed {printable(name)}\n" for name in removed) or "nothing to remove\n"


def task_text(result: dict[str, Any]) -> str:
    """`task ID`: the status, one field per line; `task cancel ID`: what the cancel did."""
    if "cancelled" in result:
        task_id, was = printable(result["task_id"]), printable(result["was"])
        if result["cancelled"]:
            return f"cancelled {task_id} (it was {was}): it will not be sent\n"
        why = _NOT_CANCELLED.get(result["was"], f"it is {was}")
        return f"not cancelled {task_id}: {why}\n"
    lines = [f"{printable(name)}: {_status_value(value)}" for name, value in result.items()]
    return "\n".join(lines) + "\n"


_NOT_CANCELLED = {
    "sending": "a worker is sending it",
    "sent": "it was sent",
    "dead": "it is in the dead letters (requeue or purge it there)",
    "cancelled": "it was cancelled already",
    "unknown": "no such task (never seen, or its status expired)",
}


def _status_value(value: object) -> str:
    if isinstance(value, list):
        return printable(" ".join(str(item) for item in value)) or "-"
    return printable(str(value))
