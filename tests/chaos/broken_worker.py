"""A deliberately broken worker for the harness's own test: it acknowledges before sending.

`python -m tests.chaos.broken_worker` runs the real worker with one change, made in this
process only: each entry is settled (acknowledged and deleted) before its email is sent. A
SIGKILL between the two, or a send that fails, then loses the email; the chaos run must say so.
"""

from __future__ import annotations

import sys

from service.store import Entry, SettleWrite
from service.wire import QueuedTask
from service.worker.__main__ import main
from service.worker.delivery import Delivery
from service.worker.fate import Fate
from service.worker.pacing import Admission

_attempt = Delivery._attempt


async def _acknowledge_first(
    self: Delivery, entry: Entry, admission: Admission | None
) -> tuple[Fate, QueuedTask | None]:
    # The bug under test: the fate is written before the send.
    await self._store.settle(SettleWrite(entry.entry_id))
    return await _attempt(self, entry, admission)


if __name__ == "__main__":
    Delivery._attempt = _acknowledge_first  # type: ignore[method-assign]
    sys.exit(main())
