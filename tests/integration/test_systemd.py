"""The worker under a stand-in for systemd (a notification socket the test owns), and the unit
files under `systemd-analyze`."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.local.redis_server import RedisServer, free_port
from service.settings import WorkerSettings
from tests.conftest import WorkerProcess, wait_until

StartWorker = Callable[..., WorkerProcess]
UNITS = Path(__file__).parents[2] / "deploy" / "systemd"
UNIT_PYTHON = "/opt/email-worker/.venv/bin/python"
UNIT_NAMES = ("email-worker.service", "email-worker@.service", "email-queue@.service")


class NotifySocket:
    """Collects what the worker sends to `$NOTIFY_SOCKET`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(8192).decode())
        except BlockingIOError:
            return self.messages

    def index(self, field: str) -> int:
        """Position of the first message carrying `field` (e.g. "READY=1"); -1 if none."""
        return next((i for i, m in enumerate(self.poll()) if field in m.split("\n")), -1)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.sock.close()


def test_worker_notifies_ready_watchdog_and_stopping(
    notify_socket: NotifySocket, start_worker: StartWorker
) -> None:
    worker = start_worker(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="400000")
    wait_until(lambda: notify_socket.index("READY=1") >= 0, 10, "READY=1")
    wait_until(lambda: notify_socket.poll().count("WATCHDOG=1") >= 3, 5, "three watchdog pings")
    assert notify_socket.index("STOPPING=1") == -1

    worker.process.send_signal(signal.SIGTERM)
    # One signal, then wait: a second one (as `stop()` sends to a worker still running) would
    # force the stop, and a slow machine would make that a race.
    assert worker.process.wait(timeout=15) == 0
    messages = notify_socket.poll()
    assert 0 <= notify_socket.index("READY=1") < notify_socket.index("STOPPING=1")
    assert sum("READY=1" in m.split("\n") for m in messages) == 1
    assert "STATUS=delivering queue emails" in messages[notify_socket.index("READY=1")]


def test_ready_waits_until_redis_answers(
    notify_socket: NotifySocket, worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here yet
    worker = WorkerProcess(
        {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
         "NOTIFY_SOCKET": str(notify_socket.path)},
        tmp_path,
    )  # fmt: skip
    redis = RedisServer(tmp_path / "late-redis", port=port)
    try:
        worker.wait_for_log("redis_not_ready")
        assert any(m.startswith("STATUS=waiting for Redis: ") for m in notify_socket.poll())
        assert notify_socket.index("READY=1") == -1
        redis.start()
        wait_until(lambda: notify_socket.index("READY=1") >= 0, 20, "READY=1 once Redis is up")
        code = worker.stop()
        assert code == 0, worker.output()
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
        redis.stop()
    line = next(x for x in worker.output().splitlines() if "redis_not_ready" in x)
    assert "Error 111 connecting to 127.0.0.1" in line  # 111: ECONNREFUSED


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (it comes with the systemd package)")
    # verify insists that ExecStart's binary exists: point it at this interpreter, which is
    # what the venv under /opt/email-worker would hold, and change nothing else.
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text()
        assert UNIT_PYTHON in text
        (tmp_path / name).write_text(text.replace(UNIT_PYTHON, sys.executable))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "email-worker.service"),
         str(tmp_path / "email-worker@.service"), str(tmp_path / "email-worker@a1.service"),
         str(tmp_path / "email-queue@.service"), str(tmp_path / "email-queue@invoices.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    complaints = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, complaints
    assert complaints == ""  # unknown keys and bad values are only printed, not failed on

    # The hardening, measured: systemd's exposure score (0 best, 10 worst) must stay <= 2.0.
    # --threshold counts in tenths.
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager",
         str(tmp_path / "email-worker.service"), str(tmp_path / "email-worker@a1.service"),
         str(tmp_path / "email-queue@invoices.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    """`Key: [values]` of the [Service] section (keys may repeat in systemd units)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_are_notify_type_with_watchdog_and_room_to_drain(name: str) -> None:
    unit = unit_settings(name)
    one = {key: values[-1] for key, values in unit.items()}
    assert (one["Type"], one["NotifyAccess"]) == ("notify", "main")
    assert one["WatchdogSec"] == "30s"
    # The main PID is the worker's: no wrapper but env(1), which execs it. The queue unit sets
    # EMAIL_QUEUE there, after the env files (tests/integration/test_cluster_queues.py).
    queue = "/usr/bin/env EMAIL_QUEUE=%i " if name == "email-queue@.service" else ""
    assert one["ExecStart"] == f"{queue}{UNIT_PYTHON} -m service.worker"
    assert "/etc/email-worker/worker.env" in unit["EnvironmentFile"]
    assert one["RestartPreventExitStatus"] == "2"
    assert one["Restart"] == "on-failure"
    # SIGKILL must not cut the stop short: it ends within WORKER_SHUTDOWN_SECONDS, and the
    # supervisor gives it 5 s more (docs/deploy.md).
    shutdown_seconds = WorkerSettings.model_fields["worker_shutdown_seconds"].default
    assert one["TimeoutStopSec"].endswith("s")
    assert int(one["TimeoutStopSec"].removesuffix("s")) >= shutdown_seconds + 5
    for key in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    if name.endswith("@.service"):
        assert "WORKER_NAME=%l-%i" in unit["Environment"]
