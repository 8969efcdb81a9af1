"""`python -m service.dashboard` and `make dashboard-demo` (python -m service.local.demo) as a
user runs them: real subprocesses, real servers, free ports only."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from service.local.redis_server import RedisServer

_SETTING_PREFIXES = ("REDIS_", "SMTP_", "MAIL_", "EMAIL_", "WORKER_", "LOG_", "DASHBOARD_")


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    return {**env, **settings}


def test_a_bad_setting_stops_it_with_one_line(redis_server: RedisServer, tmp_path: Path) -> None:
    secret = "short-secret"  # noqa: S105 - a test value, refused as too short
    for settings, variable in (
        ({"DASHBOARD_HOST": "0.0.0.0"}, "DASHBOARD_TOKEN"),  # noqa: S104 - refused, never bound
        ({"DASHBOARD_TOKEN": secret}, "DASHBOARD_TOKEN"),
        ({"DASHBOARD_PORT": "99999"}, "DASHBOARD_PORT"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "service.dashboard"],
            env=_env(REDIS_URL=redis_server.url, **settings),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"error: {variable}: ")
        assert secret not in done.stderr
        assert secret not in done.stdout


def test_a_busy_port_stops_it_with_one_line_naming_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service.dashboard"],
            env=_env(REDIS_URL=redis_server.url, DASHBOARD_PORT=str(port)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: DASHBOARD_PORT: {port} is in use on 127.0.0.1"
    ]
    assert done.stdout == ""  # no URL shown for a dashboard that is not there


def test_the_demo_shows_a_queue_with_traffic_and_stops_cleanly(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "service.local.demo", "--seconds", "60"],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", first)
        assert match, first
        deadline = time.monotonic() + 30
        sent = dead = 0
        while time.monotonic() < deadline and not (sent and dead):
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(match.group(0), timeout=2) as response:  # noqa: S310
                    page = response.read().decode()
            except OSError:
                continue
            backlog = int(re.search(r'id="backlog">(\d+)<', page).group(1))  # type: ignore[union-attr]
            dead = int(re.search(r'id="dead">(\d+)<', page).group(1))  # type: ignore[union-attr]
            sent = len(list((tmp_path / "var" / "demo" / "mail").glob("*.eml")))
        assert backlog > 0
        assert sent > 0
        assert dead > 0
    finally:
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=60)
        if demo.stdout is not None:
            demo.stdout.close()
    assert code == 0
