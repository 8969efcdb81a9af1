"""The README's web-app examples, run as shown: each file under examples/ is what the README
shows, and each serves real requests under its real server while a worker delivers."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from service.local.redis_server import RedisServer, free_port
from tests.conftest import wait_until
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("django_*.py")) + sorted(
    (ROOT / "examples").glob("*_app.py")
)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_the_readme_shows_each_example_as_it_is(example: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert example.read_text() in blocks


def _serve(command: list[str], redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url}
    with log.open("wb") as output:  # the child keeps its own descriptor
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    wait_until(lambda: _answers(port) or server.poll() is not None, 20, "the web server")
    assert server.poll() is None, log.read_text()
    return server


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            pass
    except urllib.error.HTTPError:
        return True  # a 404 or 405: it is serving
    except OSError:
        return False
    return True


def _signup(port: int, n: int) -> tuple[str, float]:
    """POST one signup; (the task id, seconds it took)."""
    data = urllib.parse.urlencode({"email": f"user{n}@example.com"}).encode()
    began = time.monotonic()
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/signup", data=data, timeout=30
    ) as response:
        body = orjson.loads(response.read())
    return str(body["task_id"]), time.monotonic() - began


Serve = Callable[[list[str]], int]


@pytest.fixture
def serve(redis_server: RedisServer, tmp_path: Path) -> Iterator[Serve]:
    """Start a web server (its command may name `{port}`) on the test Redis; its port."""
    servers: list[subprocess.Popen[bytes]] = []

    def start(command: list[str]) -> int:
        port = free_port()
        args = [arg.format(port=port) for arg in command]
        servers.append(_serve(args, redis_server.url, port, tmp_path / f"web-{port}.log"))
        return port

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=20)


def _load(port: int, requests: int, concurrency: int) -> tuple[list[str], list[float], float]:
    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda n: _signup(port, n), range(requests)))
    elapsed = time.monotonic() - began
    return [task_id for task_id, _ in results], [seconds for _, seconds in results], elapsed


def test_flask_under_gunicorn_threads_enqueues_every_signup_once(
    smtp: SmtpServer, start_worker: StartWorker, serve: Serve
) -> None:
    # --preload: the app (and its SyncProducer) is made in the master, then forked.
    web_port = serve([
        sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "25",
        "--bind", "127.0.0.1:{port}", "examples.flask_app:app",
    ])  # fmt: skip
    start_worker()

    task_ids, latencies, elapsed = _load(web_port, requests=2_000, concurrency=50)

    assert len(set(task_ids)) == 2_000  # every request answered 200 with a task of its own
    wait_until(lambda: len(smtp.received) >= 2_000, 60, "2,000 deliveries")
    time.sleep(0.5)  # a duplicate would arrive about now
    assert Counter(smtp.task_ids()) == Counter(task_ids)  # each delivered once
    quantiles = statistics.quantiles(latencies, n=100)
    print(  # the figures, for whoever reads the test's output (-s)
        f"flask/gunicorn: {2_000 / elapsed:,.0f} req/s, p50 {quantiles[49] * 1000:.1f} ms, "
        f"p99 {quantiles[98] * 1000:.1f} ms"
    )


def test_fastapi_under_uvicorn_enqueues_every_signup_once(
    smtp: SmtpServer, start_worker: StartWorker, serve: Serve
) -> None:
    web_port = serve([
        sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}",
        "examples.fastapi_app:app",
    ])  # fmt: skip
    start_worker()

    task_ids, _, _ = _load(web_port, requests=300, concurrency=20)

    assert len(set(task_ids)) == 300
    wait_until(lambda: len(smtp.received) >= 300, 30, "300 deliveries")
    assert Counter(smtp.task_ids()) == Counter(task_ids)
