"""At-least-once email delivery over a Redis Stream.

This package exports the producer side only: importing it never imports the worker or SMTP code.
Run the worker with `python -m service.worker`.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    EmailServiceError,
    EnqueueError,
    QueueFull,
    QueueUnavailable,
    WireFormatError,
)
from .producer import Producer, SyncProducer
from .status import CancelResult, TaskState, TaskStatus
from .task import EmailTask

__all__ = [
    "CancelResult",
    "ConfigError",
    "EmailServiceError",
    "EmailTask",
    "EnqueueError",
    "Producer",
    "QueueFull",
    "QueueUnavailable",
    "SyncProducer",
    "TaskState",
    "TaskStatus",
    "WireFormatError",
]
