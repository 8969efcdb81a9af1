"""`python -m bench.sink`: a minimal aiosmtpd SMTP sink that counts and timestamps, in its own
process so it never shares a CPU-bound event loop with the benchmark or the worker.

It accepts every message, stores nothing, and prints `count=N t=T` (T: CLOCK_MONOTONIC seconds,
the same clock in every process on Linux) when the count reaches each of the `--notify` values.
At the last one it first writes `--record`: a JSON object mapping each task id (read from the
`Message-ID: <taskid@domain>` header) to the time the message was received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

_MESSAGE_ID = b"\r\nMessage-ID: <"


class CountingHandler:
    """aiosmtpd handler: 250 to every message, counting and timing it."""

    def __init__(self, notify: list[int], record: Path | None) -> None:
        self.count = 0
        self._notify = set(notify)
        self._last = max(notify, default=0)
        self._record = record
        self._received: list[tuple[bytes, float]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        self.count += 1
        self._received.append((task_id_of(envelope.original_content), now))
        if self.count in self._notify:
            self._report(now)
        return "250 OK"

    def _report(self, now: float) -> None:
        if self.count == self._last and self._record is not None:
            received = {task_id.decode(): at for task_id, at in self._received}
            self._record.write_text(json.dumps(received))
        print(f"count={self.count} t={now:.6f}", flush=True)


def task_id_of(content: bytes) -> bytes:
    """The local part of `Message-ID: <taskid@domain>`, or b"" when there is none."""
    start = content.find(_MESSAGE_ID)
    if start < 0:
        return b""
    start += len(_MESSAGE_ID)
    return content[start : content.find(b"@", start)]


async def serve(port: int, handler: CountingHandler) -> None:
    """Accept SMTP connections on 127.0.0.1:`port` until the process is stopped."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-sink", decode_data=False),
        "127.0.0.1",
        port,
        backlog=256,
    )
    print("ready", flush=True)
    await server.serve_forever()


def main() -> int:
    """Run the sink until SIGTERM (default action) or Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--notify", type=int, nargs="*", default=[])
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    try:
        # Stock aiosmtpd on asyncio's own loop: the sink the figures for other queues
        # were measured on, so the comparison with them holds.
        asyncio.run(serve(args.port, CountingHandler(args.notify, args.record)))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
