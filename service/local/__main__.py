"""`make run`: the worker, plus a local Redis and SMTP sink for whatever is not configured.

With no `REDIS_URL`, a `redis-server` persisting under `var/redis/` listens on 127.0.0.1:6380;
with no `SMTP_HOST`, an SMTP sink on 127.0.0.1:2525 stores every message under `var/mail/`.
The worker runs as a child process (`python -m service.worker`) and receives our signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from .mail_sink import MailSink
from .redis_server import RedisServer

LOCAL_REDIS_PORT = 6380
LOCAL_SMTP_PORT = 2525


def main() -> int:
    """Run the worker against local defaults until it exits; return its exit code."""
    var = Path("var")
    env = dict(os.environ)
    env.setdefault("MAIL_FROM", "worker@example.com")
    redis = sink = None
    try:
        if "REDIS_URL" not in env:
            redis = RedisServer(var / "redis", port=LOCAL_REDIS_PORT)
            redis.start()
            env["REDIS_URL"] = redis.url
            print(f"local redis-server on {redis.url}, data in {redis.data_dir}/", flush=True)
        if "SMTP_HOST" not in env:
            sink = MailSink(var / "mail", port=LOCAL_SMTP_PORT)
            sink.start()
            env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink.port), SMTP_SECURITY="none")
            print(
                f"local SMTP sink on 127.0.0.1:{sink.port}, mail in {sink.directory}/", flush=True
            )
        print("enqueue from another shell with: make send TO=someone@example.com", flush=True)
        worker = subprocess.Popen([sys.executable, "-m", "service.worker"], env=env)

        def forward(signum: int, _frame: FrameType | None) -> None:
            worker.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return worker.wait()
    finally:
        if sink is not None:
            sink.stop()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
