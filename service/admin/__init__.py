"""Operating a queue: its sizes and consumers, its dead letters, and cleaning up.

`QueueAdmin` is the API; `python -m service.admin` is the command line over it.
"""

from __future__ import annotations

from .queue import (
    BulkResult,
    ConsumerInfo,
    DeadLetter,
    Progress,
    QueueAdmin,
    QueueStats,
    WorkerBeat,
)

__all__ = [
    "BulkResult",
    "ConsumerInfo",
    "DeadLetter",
    "Progress",
    "QueueAdmin",
    "QueueStats",
    "WorkerBeat",
]
