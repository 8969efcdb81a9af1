"""Summarising a py-spy profile (collapsed stacks, `--format raw`): where the worker's time goes.

Each sample's stack is put in one group, the first that any of its frames belongs to, in this
order: waiting in epoll (idle), start-up imports, pydantic/validation (decoding an entry),
logging, email rendering (building and flattening the message, also when aiosmtplib flattens
it), Redis I/O, aiosmtplib, the event loop's own work (not the runner frames every stack passes
through), the service's own code, then anything else. Under uvloop a sample with no Python frame
below the runner is in uvloop's C code, waiting or dispatching: py-spy cannot tell which.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

__all__ = ["GROUPS", "group_of", "parse_collapsed", "summarize_collapsed"]

_FRAME: Final = re.compile(r"(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
Frame = tuple[str, str]  # (function, file)

_LOOP_SCAFFOLDING: Final = frozenset(
    {"run", "run_until_complete", "run_forever", "_run_once", "_run"}
)

# A group, and whether a frame belongs to it.
GROUPS: Final[list[tuple[str, Callable[[str, str], bool]]]] = [
    ("start-up (imports)", lambda fn, f: fn == "_find_and_load"),
    ("pydantic/validation", lambda fn, f: _under(f, "pydantic", "email_validator")
        or (f.endswith(("service/wire.py", "service/task.py")) and fn != "addr_spec")),
    ("logging (structlog)", lambda fn, f: _under(f, "structlog", "logging")
        or f.endswith("service/logs.py")),
    ("email rendering", lambda fn, f: _under(f, "email") or f.endswith("service/worker/render.py")
        or fn == "addr_spec"),
    ("Redis I/O (redis-py)", lambda fn, f: _under(f, "redis")),
    ("aiosmtplib", lambda fn, f: _under(f, "aiosmtplib")),
    # Not the runner and loop frames every stack passes through: only asyncio's own work.
    ("event loop (asyncio)", lambda fn, f: _under(f, "asyncio", "selectors.py")
        and fn.rpartition(".")[2] not in _LOOP_SCAFFOLDING),
    ("the service's own code", lambda fn, f: _under(f, "service")),
]  # fmt: skip
IDLE: Final = "idle (epoll wait)"
IDLE_THREADS: Final = "idle (other threads)"
# uvloop's loop is C: with no Python frame under it, the thread waits in epoll or runs libuv.
UVLOOP_C: Final = "uvloop C code (epoll wait or dispatch)"
OTHER: Final = "other"


def _under(file: str, *packages: str) -> bool:
    return any(file.startswith(f"{p}/") or f"/{p}/" in file or file == p for p in packages)


def parse_collapsed(text: str) -> Iterator[tuple[list[Frame], int]]:
    """(frames root first, sample count) for each line of py-spy's raw output."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            match = _FRAME.match(part)
            frames.append((match["function"], match["file"]) if match else (part, ""))
        yield frames, int(count)


def group_of(frames: list[Frame]) -> str:
    """The group a stack's time is counted in."""
    if frames and (waiting := _waiting(frames[-1])):
        return waiting
    for name, belongs in GROUPS:
        if any(belongs(function, file) for function, file in frames):
            return name
    return OTHER


def _waiting(leaf: Frame) -> str | None:
    """The idle group of a frame in which a thread blocks, if it is one."""
    function, file = leaf
    if file.endswith("selectors.py") and function.endswith("select"):
        return IDLE
    if file.endswith("asyncio/runners.py") and function.endswith("run"):
        return UVLOOP_C
    if file.endswith(("threading.py", "concurrent/futures/thread.py", "queue.py")):
        return IDLE_THREADS
    return None


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Groups, top functions by own and by total time, and a printable text."""
    groups: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for frames, count in parse_collapsed(path.read_text()):
        samples += count
        group = group_of(frames)
        groups[group] += count
        if group in {IDLE, IDLE_THREADS, UVLOOP_C}:
            continue
        if frames:
            own[_name(frames[-1])] += count
        for name in {_name(frame) for frame in frames if not _is_scaffolding(frame)}:
            total[name] += count
    busy = samples - groups[IDLE] - groups[IDLE_THREADS] - groups[UVLOOP_C]
    summary = {
        "samples": samples,
        "busy_samples": busy,
        "groups": dict(groups.most_common()),
        "own": dict(own.most_common(top)),
        "total": dict(total.most_common(top)),
    }
    summary["text"] = _text(summary, busy)
    return summary


def _name(frame: Frame) -> str:
    function, file = frame
    return f"{function} ({_short(file)})"


def _short(file: str) -> str:
    return re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", file)


def _is_scaffolding(frame: Frame) -> bool:
    """Frames under which everything runs (runpy, asyncio.run, the loop): not informative."""
    function, file = frame
    method = function.rpartition(".")[2]
    return (
        file.startswith("<frozen")
        or (_under(file, "asyncio") and method in _LOOP_SCAFFOLDING)
        or (file.endswith("__main__.py") and function in {"<module>", "main"})
    )


def _text(summary: dict[str, Any], busy: int) -> str:
    def pct(count: int, of: int) -> str:
        return f"{100 * count / of:5.1f}%" if of else "  -  "

    waiting = summary["groups"].get(IDLE, 0)
    uvloop = summary["groups"].get(UVLOOP_C, 0)
    loop = busy + waiting + uvloop
    lines = [
        f"Profile: {busy} busy samples; the event loop thread ran Python code in "
        f"{pct(busy, loop).strip()} of its samples",
    ]
    if uvloop:
        lines.append(
            f"and was in uvloop's C code (waiting in epoll, or libuv dispatching and doing "
            f"socket I/O: py-spy cannot tell which) in {pct(uvloop, loop).strip()}"
        )
    lines += ["", "Groups (% of busy samples):"]
    lines += [
        f"  {pct(c, busy)}  {g}"
        for g, c in summary["groups"].items()
        if g not in {IDLE, IDLE_THREADS, UVLOOP_C}
    ]
    lines += ["", "Top own time (% of busy):"]
    lines += [f"  {pct(c, busy)}  {f}" for f, c in summary["own"].items()]
    lines += ["", "Top total time (% of busy):"]
    lines += [f"  {pct(c, busy)}  {f}" for f, c in summary["total"].items()]
    lines += [
        "",
        "Event loop busy = busy / (busy + epoll wait); idle executor threads are left out.",
    ]
    return "\n".join(lines)
