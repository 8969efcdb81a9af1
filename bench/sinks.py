"""The SMTP sinks the benchmark sends to, each in a process of its own, and their counters.

- `aiosmtpd`: `python -m bench.sink`, which also records when each task id arrived;
- `smtp-sink`: Postfix's C sink, when it is on the PATH; the parent reads its `-c` counter
  (`sess=.. quit=.. mesg=N`, one update per message) and timestamps each milestone itself.
  With a dump directory it also writes each message to a file of its own there (`-d`), whose
  modification time is when the sink had the whole message (see `bench.acceptance`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final, Literal

from service.local.redis_server import free_port

from .children import Children

__all__ = ["SinkKind", "SinkProcess", "available_sinks", "start_sink"]

SinkKind = Literal["aiosmtpd", "smtp-sink"]

_COUNT: Final = re.compile(rb"(?:count|mesg)=(\d+)(?: t=([\d.]+))?")
_START_SECONDS: Final = 10.0
_REPOSITORY: Final = Path(__file__).resolve().parent.parent


def available_sinks() -> list[SinkKind]:
    """The sinks this machine can run: aiosmtpd always, smtp-sink when Postfix is installed."""
    kinds: list[SinkKind] = ["aiosmtpd"]
    if shutil.which("smtp-sink"):
        kinds.append("smtp-sink")
    return kinds


class SinkProcess:
    """A running sink: its port, and when its received count reached each milestone."""

    def __init__(
        self, kind: SinkKind, port: int, process: subprocess.Popen[bytes], record: Path | None
    ) -> None:
        self.kind = kind
        self.port = port
        self.process = process
        self._record = record
        self._milestones: list[int] = []
        self._reached: dict[int, float] = {}
        self._lock = threading.Lock()

    def watch(self, milestones: list[int]) -> None:
        """Follow the sink's output in a daemon thread, noting when each milestone is reached."""
        self._milestones = sorted(milestones)
        if self.process.stdout is not None:
            threading.Thread(target=self._follow, daemon=True, name=f"{self.kind}-out").start()

    async def reached(self, count: int, within: float) -> float:
        """The monotonic time at which the sink had received `count` messages.

        `within` bounds the wait (seconds); the sink's own timestamps are what is returned.
        """
        deadline = time.monotonic() + within
        while (at := self._reached.get(count)) is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} did not receive {count} messages in {within} s")
            await asyncio.sleep(0.005)
        return at

    def received_at(self) -> dict[str, float]:
        """Task id -> receive time, for `aiosmtpd` sinks started with a record file."""
        if self._record is None:
            raise ValueError(f"{self.kind} records no receive times")
        received: dict[str, float] = json.loads(self._record.read_text())
        return received

    def _follow(self) -> None:
        if self.process.stdout is None:
            return
        descriptor = self.process.stdout.fileno()
        tail = b""
        while chunk := os.read(descriptor, 65536):
            observed = time.monotonic()
            *updates, tail = re.split(rb"[\r\n]", tail + chunk)
            for update in updates:
                if match := _COUNT.search(update):
                    count = int(match[1])
                    self._note(count, float(match[2]) if match[2] else observed)

    def _note(self, count: int, at: float) -> None:
        with self._lock:
            for milestone in self._milestones:
                if milestone > count:
                    break
                self._reached.setdefault(milestone, at)


def start_sink(
    children: Children,
    kind: SinkKind,
    workdir: Path,
    milestones: list[int] | None = None,
    *,
    dump: Path | None = None,
) -> SinkProcess:
    """Start a sink on a free port; with `milestones`, follow its count (else it only accepts).

    `dump` (smtp-sink only): the directory it writes each message into, one file per message.
    """
    if dump is not None and kind != "smtp-sink":
        raise ValueError("only smtp-sink dumps messages")
    port = free_port()
    counting = bool(milestones)
    record = workdir / f"received-{port}.json" if kind == "aiosmtpd" and counting else None
    args = _command(kind, port, milestones or [], record, dump)
    if counting:
        process = children.spawn(args, stdout=subprocess.PIPE, cwd=workdir, env=_env())
    else:
        with (workdir / f"{kind}-{port}.log").open("ab") as log:
            process = children.spawn(args, stdout=log, cwd=workdir, env=_env())
    sink = SinkProcess(kind, port, process, record)
    sink.watch(milestones or [])
    _wait_until_listening(sink)
    return sink


def _env() -> dict[str, str]:
    """Our environment, with the repository on the path so `-m bench.sink` imports anywhere."""
    path = [str(_REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _command(
    kind: SinkKind, port: int, milestones: list[int], record: Path | None, dump: Path | None
) -> list[str]:
    if kind == "aiosmtpd":
        args = [sys.executable, "-m", "bench.sink", "--port", str(port)]
        if milestones:
            args += ["--notify", *map(str, milestones)]
        if record is not None:
            args += ["--record", str(record)]
        return args
    binary = shutil.which("smtp-sink") or "smtp-sink"
    counter = ["-c"] if milestones else []
    # The file name is the template plus a random 32-bit hex number: the time in the name
    # keeps two messages from drawing the same file.
    dumping = [] if dump is None else ["-d", f"{dump}/%H%M%S."]
    # -u root: smtp-sink refuses to keep root privileges; 1000: listen backlog.
    return [binary, *counter, *dumping, "-u", "root", f"127.0.0.1:{port}", "1000"]


def _wait_until_listening(sink: SinkProcess) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if sink.process.poll() is not None:
            raise RuntimeError(f"{sink.kind} exited at start with code {sink.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", sink.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{sink.kind} did not listen on port {sink.port}")
