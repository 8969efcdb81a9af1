"""The Redis side of a queue: the one home of its Lua scripts and of every reply shape.

`QueueStore` has a typed method per script and command; `scripts` holds the Lua and the only
code that knows each script's KEYS and ARGV; `replies` reads Redis's replies and error words.
"""

from __future__ import annotations

from .access import Access
from .queue import QueueOverview, QueueSizes, QueueStore
from .replies import ConsumerInfo, Entry, GroupInfo
from .scripts import (
    MAX_ENTRY_FIELDS,
    SENT_RECORD_TTL_MS,
    EnqueueReply,
    NewTask,
    RetryCopy,
    SettleReply,
    SettleWrite,
    StatusNote,
)

__all__ = [
    "MAX_ENTRY_FIELDS",
    "SENT_RECORD_TTL_MS",
    "Access",
    "ConsumerInfo",
    "EnqueueReply",
    "Entry",
    "GroupInfo",
    "NewTask",
    "QueueOverview",
    "QueueSizes",
    "QueueStore",
    "RetryCopy",
    "SettleReply",
    "SettleWrite",
    "StatusNote",
]
