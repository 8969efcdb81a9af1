"""Turning measurements into the printed table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.local.redis_server import find_redis_server

__all__ = ["Row", "format_table", "machine", "median_of", "rate", "write_json"]


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


def _redis_version() -> str:
    try:
        out = subprocess.run(  # noqa: S603 - our own redis-server binary
            [find_redis_server(), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    version = next((part for part in out.split() if part.startswith("v=")), "v=unknown")
    return version[2:]
