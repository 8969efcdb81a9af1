"""A deliberately broken worker for the harness's own test: it acknowledges before sending.

`python -m tests.chaos.broken_worker` runs the real worker with one change, made in this
process only: each entry is settled (acknowledged and deleted) before its email is sent. A
SIGKILL between the two, or a send that fails, then loses the email; the chaos run must say so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from service.worker.__main__ import main
from service.worker.delivery import Delivery
from service.worker.stream import Entry

_attempt = Delivery._attempt


async def _acknowledge_first(
    self: Delivery, entry: Entry, task_log: Any, started: float, release: Callable[[], None]
) -> None:
    await self._stream.settle(entry)  # the bug under test: the fate is written before the send
    await _attempt(self, entry, task_log, started, release)


if __name__ == "__main__":
    Delivery._attempt = _acknowledge_first  # type: ignore[method-assign]
    sys.exit(main())
