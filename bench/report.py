"""Turning measurements into the printed table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from service.local.redis_server import find_redis_server

__all__ = [
    "Row",
    "format_markdown",
    "format_table",
    "git_revision",
    "machine",
    "median_of",
    "rate",
    "write_json",
    "write_markdown",
]

_REPOSITORY: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a value, optionally with the floor it is compared to."""

    measurement: str
    sink: str
    value: str
    floor: str = ""
    ratio: str = ""
    notes: str = ""


async def median_of(
    runs: int, measure: Callable[[], Awaitable[float]]
) -> tuple[float, list[float]]:
    """Run `measure` `runs` times, one after the other; the median and every sample."""
    samples = [await measure() for _ in range(runs)]
    return statistics.median(samples), samples


def rate(per_second: float) -> str:
    """A rate, grouped by thousands."""
    return f"{per_second:,.0f}/s"


def ratio(value: float, floor: float) -> str:
    """`value` as a fraction of `floor`."""
    return f"{value / floor:.2f}" if floor else ""


def format_table(rows: list[Row]) -> str:
    """A plain-text table (also valid Markdown)."""
    header = Row("measurement", "sink", "value", "floor", "ratio", "notes")
    cells = [[r.measurement, r.sink, r.value, r.floor, r.ratio, r.notes] for r in (header, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header.__slots__))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "redis_server": _redis_version(),
        "load_average_at_start": os.getloadavg(),
    }


def describe(info: dict[str, Any]) -> str:
    """One line naming the machine."""
    load = ", ".join(f"{x:.2f}" for x in info["load_average_at_start"])
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['os']} (Linux {info['kernel']}), "
        f"Python {info['python']}, redis-server {info['redis_server']}, "
        f"load average at start {load}"
    )


def git_revision() -> str:
    """The commit the benchmark ran on, marked when the work tree had uncommitted changes."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def format_markdown(
    *,
    started: datetime,
    info: dict[str, Any],
    revision: str,
    emails: int,
    runs: int,
    table: str,
    extra: str = "",
) -> str:
    """A results page for bench/results/: what ran, where, on which code, and the table."""
    load = ", ".join(f"{x:.2f}" for x in info["load_average_at_start"])
    lines = [
        f"# Benchmark, {started:%Y-%m-%d %H:%M} UTC",
        "",
        "Written by `make bench`; every figure below is from this one run.",
        "",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['os']} (Linux {info['kernel']})",
        f"- Python {info['python']}, redis-server {info['redis_server']}",
        f"- Load average at start (1, 5, 15 min): {load}",
        f"- Workload: {emails:,} emails per measurement, medians of {runs} run(s)",
        f"- Commit: {revision}",
        "",
        table,
        "",
    ]
    if extra:
        lines += ["```", extra.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def write_markdown(directory: Path, started: datetime, document: str) -> Path:
    """Write `document` to `directory/<yyyy-mm-dd-HHMM>.md` (UTC) without overwriting any file;
    return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y-%m-%d-%H%M}"
    for suffix in ("", *(f"-{n}" for n in range(2, 100))):
        path = directory / f"{stem}{suffix}.md"
        try:
            with path.open("x") as file:
                file.write(document)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{directory / stem}.md and its numbered variants all exist")


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write `document` to `path`, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    except OSError:
        return platform.system()


def _git(*args: str) -> str:
    return subprocess.run(  # noqa: S603 - a fixed git command in our own checkout
        ["git", *args],  # noqa: S607 - git from the PATH, as a developer runs it
        cwd=_REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _redis_version() -> str:
    try:
        out = subprocess.run(  # noqa: S603 - our own redis-server binary
            [find_redis_server(), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    version = next((part for part in out.split() if part.startswith("v=")), "v=unknown")
    return version[2:]
