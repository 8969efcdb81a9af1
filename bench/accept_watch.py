"""`python -m bench.accept_watch DIR OUT`: when each file in DIR was closed after writing.

smtp-sink, started with `-d DIR/...`, writes each message into a file of its own and closes it
once the message is complete. This process waits on inotify (IN_CLOSE_WRITE) and stamps each
file with `time.time()` as soon as the kernel hands it the event; it prints `ready` once it
watches, and on SIGTERM writes OUT, a JSON object: file name -> time. A stamp is never early;
it is late by the time this process took to be scheduled, which on a loaded machine can be
milliseconds: the latencies built on it are upper bounds (see `bench.acceptance`).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Final, NoReturn

_IN_CLOSE_WRITE: Final = 0x00000008
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


def _stop(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


def watch(directory: Path, out: Path) -> None:
    """Stamp closed files until SIGTERM, then write the stamps to `out`."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = libc.inotify_init1(os.O_CLOEXEC)
    if descriptor < 0 or libc.inotify_add_watch(descriptor, bytes(directory), _IN_CLOSE_WRITE) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    stamps: dict[str, float] = {}
    signal.signal(signal.SIGTERM, _stop)
    print("ready", flush=True)
    try:
        while True:
            events = os.read(descriptor, 1 << 16)
            now = time.time()
            offset = 0
            while offset < len(events):
                _, _, _, length = _EVENT.unpack_from(events, offset)
                offset += _EVENT.size
                name = events[offset : offset + length].rstrip(b"\0").decode()
                offset += length
                stamps.setdefault(name, now)
    finally:
        out.write_text(json.dumps(stamps))


def main() -> int:
    """Watch argv[1], write to argv[2]."""
    directory, out = Path(sys.argv[1]), Path(sys.argv[2])
    watch(directory, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
