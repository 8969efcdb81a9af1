"""No secret in a traceback, in any log format, whether or not `rich` is importable.

structlog's console renderer switches to rich's tracebacks when rich is importable, and those
print every frame's local variables: redis-py's AUTH arguments among them. The real failing path
here is a worker given a wrong Redis password: it stops with a logged traceback (exit 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.local.redis_server import free_port
from tests.conftest import WorkerProcess
from tests.servers import redis_server

RIGHT_PASSWORD = "right-pw-0b7d"  # noqa: S105 - a test server's password
WRONG_PASSWORD = "wrong-pw-hunter2-3f9a"  # noqa: S105 - checked for leaks
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _hide_rich(directory: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes `import rich` fail as if not installed."""
    (directory / "rich").mkdir(parents=True)
    (directory / "rich" / "__init__.py").write_text(
        'raise ImportError("rich hidden by the test")\n'
    )
    return directory


@pytest.mark.parametrize("rich", ["importable", "hidden"])
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_failed_redis_login_logs_a_traceback_without_the_password(
    log_format: str, rich: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with redis_server(
        tmp_path / "redis",
        ["--port", str(port), "--requirepass", RIGHT_PASSWORD],
        f"redis://:{RIGHT_PASSWORD}@127.0.0.1:{port}/0",
    ):
        env = {
            **worker_env,
            "REDIS_URL": f"redis://:{WRONG_PASSWORD}@127.0.0.1:{port}/0",
            "LOG_FORMAT": log_format,
            "LOG_LEVEL": "DEBUG",
        }
        if rich == "hidden":
            env["PYTHONPATH"] = str(_hide_rich(tmp_path / "no-rich"))
        worker = WorkerProcess(env, tmp_path)
        try:
            assert worker.process.wait(timeout=30) == 1  # wrong credentials do not heal
        finally:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
    output = _ANSI.sub("", worker.output())
    assert "worker_failed" in output
    assert "AuthenticationError" in output  # the traceback is there...
    assert "Traceback" in output or '"exc_type"' in output
    assert WRONG_PASSWORD not in output  # ...its frames' locals are not
    assert "auth_args" not in output
