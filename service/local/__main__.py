"""`make run`: the worker, plus a local Redis and SMTP sink for whatever is not configured.

Redis, unless `REDIS_URL` is set (environment or `.env`): the one that answers PING at the
default address (localhost:6379) if there is one; else a `redis-server` started on that port,
persisting under `var/redis/`; else, that port being taken, one on a free port. SMTP, unless
`SMTP_HOST` is set: a sink on 127.0.0.1:2525, or a free port, storing each email under
`var/mail/`. `var/local/stack.json` says what runs until we exit: `make send` and the CLIs
started from this directory read it to reach the same Redis, and a second `make run` here is
refused.

The worker (`python -m service.worker`) and redis-server run in process groups of their own, so
that of ours the terminal's Ctrl-C reaches only this process, which passes it on once: the worker
drains (a second Ctrl-C stops it at once), then Redis and the sink stop, and we exit 0. (make,
which gets the Ctrl-C too, waits for us, then ends itself by SIGINT without a message.)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings

from ..settings import DEFAULT_REDIS_URL, QueueSettings, redact_url
from .mail_sink import MailSink
from .ports import port_is_free
from .redis_server import RedisServer, answers_ping
from .stack_file import LocalStack, StackFile, running_stack

# Where the SMTP sink listens if that port is free. The tests point it at a port of their own.
SINK_PORT = int(os.environ.get("TEST_DEFAULT_SINK_PORT", "2525"))
VAR = Path("var")


class _Configured(BaseSettings):
    """What the user configured (environment or `.env`, read as the worker reads them)."""

    model_config = QueueSettings.model_config
    redis_url: str | None = None
    smtp_host: str | None = None
    mail_from: str | None = None


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed): counted, and each passed on to the
    worker once it runs. The worker drains on the first and stops at once on the second."""

    def __init__(self) -> None:
        self.received = 0
        self._worker: subprocess.Popen[bytes] | None = None
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def forward_to(self, worker: subprocess.Popen[bytes]) -> None:
        """Pass the signals that come from now on to `worker`."""
        self._worker = worker
        if self.received:  # one came while the worker was being started
            worker.terminate()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1
        if self._worker is not None:
            self._worker.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)


def main() -> int:
    """Run the worker, with what is not configured started here; return its exit code."""
    signals = _StopSignals()
    stack_file = StackFile()
    redis: RedisServer | None = None
    sink: MailSink | None = None
    try:
        if not stack_file.claim():
            print(_already_running(running_stack()), file=sys.stderr)
            return 1
        configured = _Configured()
        env = dict(os.environ)
        if configured.mail_from is None:
            env["MAIL_FROM"] = "worker@example.com"
        if configured.redis_url is None:
            redis = _start_redis_unless_one_answers(VAR / "redis")
            env["REDIS_URL"] = redis.url if redis else DEFAULT_REDIS_URL
        else:
            print(f"redis: {redact_url(configured.redis_url)}, as REDIS_URL says", flush=True)
        stack = LocalStack(pid=os.getpid(), redis_url=configured.redis_url or env["REDIS_URL"])
        if configured.smtp_host is None:
            sink = _start_sink(VAR / "mail")
            env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink.port), SMTP_SECURITY="none")
            stack = dataclasses.replace(
                stack, smtp=f"127.0.0.1:{sink.port}", mail_dir=str(sink.directory.resolve())
            )
        else:
            print(f"smtp: {configured.smtp_host}, as SMTP_HOST says")
        stack_file.publish(stack)
        print(
            "from another shell in this directory: make send TO=you@example.com; Ctrl-C stops",
            flush=True,
        )
        if signals.received:
            return 0
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.worker"], env=env, process_group=0
        )
        signals.forward_to(worker)
        code = worker.wait()
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
    except (OSError, RuntimeError) as exc:  # start-up failed: one line, no traceback
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    finally:
        if sink is not None:
            sink.stop()
        if redis is not None:
            redis.stop()
        stack_file.release()


def _start_redis_unless_one_answers(data_dir: Path) -> RedisServer | None:
    """None when a Redis answers at the default address; else a redis-server started on its
    port, or on a free port when that one is taken. Prints one line saying which."""
    parts = urlsplit(DEFAULT_REDIS_URL)
    host, port = parts.hostname or "localhost", parts.port or 6379
    if answers_ping(host, port):
        print(
            f"redis: using the Redis that answers on {host}:{port}; "
            f"from another shell: REDIS_URL={DEFAULT_REDIS_URL}",
            flush=True,
        )
        return None
    taken = not port_is_free(port)
    server = RedisServer(data_dir, port=None if taken else port)
    server.start()
    why = f", as {host}:{port} is taken and does not answer PING" if taken else ""
    print(
        f"redis: started redis-server on 127.0.0.1:{server.port}{why} (data in {data_dir}/); "
        f"from another shell: REDIS_URL={server.url}",
        flush=True,
    )
    return server


def _start_sink(directory: Path) -> MailSink:
    """The SMTP sink, on SINK_PORT if free, else on a free port. Prints one line saying which."""
    sink = MailSink(directory, port=SINK_PORT)
    sink.start()
    moved = f" ({SINK_PORT} is taken)" if sink.port != SINK_PORT else ""
    print(f"smtp: sink on 127.0.0.1:{sink.port}{moved}, mail in {directory}/", flush=True)
    return sink


def _already_running(stack: LocalStack | None) -> str:
    if stack is None or stack.redis_url is None:
        pid = f" (pid {stack.pid})" if stack else ""
        return f"make run: one is already starting in this directory{pid}; not starting another"
    mail = f"mail in {stack.mail_dir}/" if stack.mail_dir else "no SMTP sink"
    return (
        f"make run: already running in this directory (pid {stack.pid}, Redis "
        f"{redact_url(stack.redis_url)}, {mail}); not starting another. "
        f"To stop it: Ctrl-C in its terminal, or kill {stack.pid}"
    )


if __name__ == "__main__":
    sys.exit(main())
