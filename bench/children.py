"""Every process the benchmark starts, and the guarantee that all of them are stopped."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["Children"]

_STOP_SECONDS = 10.0


class Children:
    """Starts child processes and stops every one still running on `close()` (or `with` exit).

    Children stay in our process group, so a Ctrl-C in the terminal reaches them too; whatever
    survives it gets SIGTERM, then SIGKILL.
    """

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start `args` (stdin closed, stderr with stdout); it is stopped on `close()`."""
        process = subprocess.Popen(  # noqa: S603 - the benchmark starts its own tools on purpose
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
        )
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = _STOP_SECONDS) -> int:
        """SIGTERM `process`, SIGKILL it after `timeout`; return its exit code."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ValueError):
            self._processes.remove(process)
        return process.returncode

    def close(self) -> None:
        """Stop every child still running, newest first."""
        for process in reversed(list(self._processes)):
            self.stop(process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
