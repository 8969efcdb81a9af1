"""What the browser tests and the screenshots share: finding Chromium, and the dashboard as a
real subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Playwright

from service.local.ports import free_port

__all__ = ["chromium_path", "dashboard_process", "launch"]

# Where Debian's package puts it; CHROMIUM names another one.
_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None when the machine has none."""
    if configured := os.environ.get("CHROMIUM"):
        return configured
    for candidate in _CANDIDATES:
        if found := shutil.which(candidate):
            return found
    return None


def launch(playwright: Playwright, executable: str) -> Browser:
    """Headless Chromium; without its sandbox when we run as root (CI), which it refuses."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return playwright.chromium.launch(
        executable_path=executable, headless=True, args=["--no-sandbox"] if root else []
    )


@contextlib.contextmanager
def dashboard_process(env: dict[str, str], workdir: Path) -> Iterator[str]:
    """`python -m service.dashboard` with `env` on a free port; yields its base URL."""
    port = free_port()
    log_path = workdir / f"dashboard-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.dashboard"],
            env={**env, "DASHBOARD_PORT": str(port), "DASHBOARD_HOST": "127.0.0.1"},
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/static/live.js", timeout=1):  # noqa: S310
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    why = log_path.read_text()
                    raise RuntimeError(f"the dashboard did not start: {why}") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
