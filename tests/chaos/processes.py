"""The processes of a chaos run: one redis-server (AOF) and the worker processes, each behind its
own pair of fault proxies, with a record of how each one ended. On a Redis Cluster a worker has
an SMTP proxy only: it reaches the nodes the cluster announces, directly."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from service.local.redis_server import RedisServer
from tests.chaos.mailserver import MailServer
from tests.chaos.proxy import FaultProxy

__all__ = ["ChaosRedis", "Incarnation", "WorkerFleet"]

REPO: Final = Path(__file__).resolve().parents[2]
# Settings the harness controls; anything inherited from the shell is removed.
_SETTING_PREFIXES: Final = ("REDIS_", "SMTP_", "MAIL_", "EMAIL_", "WORKER_", "LOG_")
_EXIT_WAIT_SECONDS: Final = 30.0
_START_WAIT_SECONDS: Final = 60.0


class ChaosRedis(RedisServer):
    """A private redis-server (AOF, everysec) that can also be frozen with SIGSTOP."""

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing is answered."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause`."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None


@dataclass(eq=False)
class Incarnation:
    """One worker process: its number (unique in the run), proxies, log, and how it ended."""

    number: int
    process: subprocess.Popen[bytes]
    log_path: Path
    redis_link: FaultProxy | None  # None on a cluster
    smtp_link: FaultProxy
    started: float
    ended: float | None = None
    end: str = ""  # "SIGKILL", "SIGTERM", "stopped at the end", or "exited by itself"
    exit_code: int | None = None

    @property
    def alive(self) -> bool:
        """Running and not yet told to go."""
        return self.ended is None and self.process.poll() is None


class WorkerFleet:
    """Starts worker processes and keeps the record of every one of them."""

    def __init__(
        self, workdir: Path, redis: int | str, mail: MailServer, env: dict[str, str], module: str
    ) -> None:
        """`redis`: the port of the one redis-server (each worker gets a proxy to it), or the
        URL the workers use as it is (a cluster)."""
        self._workdir = workdir
        self._redis = redis
        self._mail = mail
        self._module = module
        base = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
        # The broken-worker variant lives under tests/: make the repository importable.
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
        self._env = {**base, **env}
        self.incarnations: list[Incarnation] = []

    def alive(self) -> list[Incarnation]:
        """Workers running and not being stopped."""
        return [incarnation for incarnation in self.incarnations if incarnation.alive]

    async def start(self) -> Incarnation:
        """Start one more worker, with its own proxies and its own SMTP listening port."""
        number = len(self.incarnations)
        smtp_port = await self._mail.listen(number)
        smtp_link = FaultProxy(smtp_port, f"smtp-{number}")
        await smtp_link.start()
        redis_link = None
        if isinstance(self._redis, str):
            redis_url = self._redis
        else:
            redis_link = FaultProxy(self._redis, f"redis-{number}")
            await redis_link.start()
            redis_url = f"redis://127.0.0.1:{redis_link.port}/0"
        env = {**self._env, "REDIS_URL": redis_url, "SMTP_PORT": str(smtp_link.port)}
        log_path = self._workdir / f"worker-{number}.log"
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            # Popen returns at once (the child runs on its own): the event loop is not held up.
            process = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", self._module],
                env=env,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        incarnation = Incarnation(number, process, log_path, redis_link, smtp_link, time.time())
        self.incarnations.append(incarnation)
        return incarnation

    async def wait_started(self, incarnation: Incarnation) -> None:
        """Until its log says it started: a SIGTERM before its handlers are in place would end
        it as the default action does (exit -15), which is not what the run tests."""
        deadline = time.monotonic() + _START_WAIT_SECONDS
        # Polled: the log is a file the child writes.
        while time.monotonic() < deadline:
            if b'"event":"worker_started"' in incarnation.log_path.read_bytes():
                return
            if incarnation.process.poll() is not None:
                return  # the report names how it ended
            await asyncio.sleep(0.1)

    def kill(self, incarnation: Incarnation) -> None:
        """SIGKILL: no drain, no settle; its pending entries wait for the reclaim."""
        incarnation.process.send_signal(signal.SIGKILL)
        incarnation.process.send_signal(signal.SIGCONT)  # a frozen one must not stay frozen
        self._ended(incarnation, "SIGKILL")

    async def terminate(self, incarnation: Incarnation, how: str = "SIGTERM") -> None:
        """SIGTERM and wait for the drain to end (SIGKILL, recorded, if it never does)."""
        self._ended(incarnation, how)
        incarnation.process.send_signal(signal.SIGTERM)
        incarnation.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + _EXIT_WAIT_SECONDS
        # Polled: asyncio has no event for the exit of a child it did not start itself.
        while incarnation.process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if incarnation.process.poll() is None:
            await self._dump_stacks(incarnation)
            incarnation.process.kill()
            incarnation.end += " (hung: SIGKILLed after 30 s)"
        incarnation.exit_code = incarnation.process.wait()
        await self._release(incarnation)

    async def _dump_stacks(self, incarnation: Incarnation) -> None:
        """Where a hung worker is stuck, into `worker-N.hang.txt`, if py-spy is installed."""
        py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
        if py_spy is None:
            return
        dump = await asyncio.create_subprocess_exec(
            py_spy, "dump", "--pid", str(incarnation.process.pid),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await dump.communicate()
        incarnation.log_path.with_suffix(".hang.txt").write_bytes(output)

    async def reap(self) -> None:
        """Close the proxies of workers that are gone; note any that exited by itself."""
        for incarnation in self.incarnations:
            code = incarnation.process.poll()
            if code is None or incarnation.exit_code is not None:
                continue
            if incarnation.ended is None:
                self._ended(incarnation, "exited by itself")
            incarnation.exit_code = code
            await self._release(incarnation)

    def _ended(self, incarnation: Incarnation, how: str) -> None:
        if incarnation.ended is None:
            incarnation.ended, incarnation.end = time.time(), how

    async def close(self) -> None:
        """Kill and reap every worker still running and close every proxy, whatever happened.

        A worker may still run here when the run failed, or when a stop the injector began
        (a deploy's SIGTERM) was still waiting for the drain as the run ended.
        """
        for incarnation in self.incarnations:
            if incarnation.process.poll() is None:
                incarnation.process.kill()
            await asyncio.to_thread(incarnation.process.wait)
            await self._release(incarnation)

    async def _release(self, incarnation: Incarnation) -> None:
        if incarnation.redis_link is not None:
            await incarnation.redis_link.close()
        await incarnation.smtp_link.close()
