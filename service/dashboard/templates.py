"""The templates' environment and filters: how stored values read on a page (pure).

Autoescaping is on for every template (HTML-escaping what Jinja2 prints); `shown` also makes
stored text printable (control characters, bidirectional overrides and line separators written
as escapes, as the admin CLI does) and cuts it where a list shows it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..admin.tables import printable

__all__ = ["environment"]


def environment(directory: Path) -> Environment:
    """Jinja2 with autoescaping on for every template, and the filters below."""
    env = Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters.update(shown=_shown, when=_when, ago=_ago, from_json=_from_json)
    return env


def _shown(value: object, limit: int | None = None) -> str:
    """Stored text made printable, cut to `limit` characters (with the length said)."""
    text = printable(str(value))
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}… ({len(text):,} characters)"
    return text


def _when(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ms: int | None) -> str:
    if ms is None:
        return "—"
    seconds = ms / 1000 - time.time()
    word = "in " if seconds > 0 else ""
    seconds = abs(seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            text = f"{seconds / size:.1f} {unit}"
            break
    else:
        text = f"{seconds:.0f} s"
    return f"{word}{text}" + ("" if word else " ago")


def _from_json(text: str) -> dict[str, Any]:
    """A stored task's JSON as a dict (empty when it does not read as one)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
