"""`make dashboard-screenshots`: a picture of each dashboard page, into docs/dashboard/.

Runs `make dashboard-demo`'s stack (python -m service.local.demo) in a scratch directory, lets
its traffic run for a while so that the charts have something to draw, then has headless
Chromium load each page and save it as a PNG.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from .harness import chromium_path, launch

_PAGES = (
    ("overview", "/"),
    ("workers", "/workers"),
    ("dead-letters", "/dead"),
    ("dead-letter", None),  # the newest letter, found on the list
    ("bulk-confirm", "/dead/bulk?action=requeue&domain=bounce.example"),
    ("scheduled", "/scheduled"),
    ("find", "/find?q=welcome"),
    ("find-task", None),  # the status of the first scheduled task
)


def main() -> int:
    """Take the screenshots; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard"))
    parser.add_argument("--warm-up", type=float, default=45.0, help="seconds of traffic first")
    args = parser.parse_args()
    executable = chromium_path()
    if executable is None:
        print("no Chromium on this machine: apt-get install chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        demo = subprocess.Popen(
            [sys.executable, "-m", "service.local.demo", "--seconds", str(args.warm_up + 120)],
            cwd=scratch,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert demo.stdout is not None
            match = re.search(r"http://127\.0\.0\.1:\d+", demo.stdout.readline())
            if match is None:
                print("the demo did not print its URL", file=sys.stderr)
                return 1
            time.sleep(args.warm_up)
            _shoot(executable, match.group(0), args.out)
        finally:
            demo.send_signal(signal.SIGTERM)
            demo.wait(timeout=60)
            if demo.stdout is not None:
                demo.stdout.close()
    return 0


def _shoot(executable: str, url: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = launch(playwright, executable)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for name, path in _PAGES:
            if name == "dead-letter":
                page.goto(url + "/dead")
                page.locator("table.letters a").first.click()
            elif path is None:
                page.goto(url + "/scheduled")
                task_id = page.locator("tbody code").first.inner_text()
                page.goto(f"{url}/find?q={task_id}")
            else:
                page.goto(url + path)
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"{out / name}.png")
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
