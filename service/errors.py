"""The package's one exception tree.

Every error carries its data as attributes so callers can act on it without parsing messages,
and no message ever contains a secret (passwords, credential-bearing URLs, message bodies).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmailServiceError",
    "QueueFull",
    "SmtpUnavailableError",
    "WireFormatError",
]


class EmailServiceError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(EmailServiceError, ValueError):
    """A setting is missing or invalid; `variable` names the environment variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class WireFormatError(EmailServiceError, ValueError):
    """A stream entry cannot be decoded into a task; such entries are dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QueueFull(EmailServiceError):
    """The queue cannot take more tasks; nothing was enqueued. Retry later.

    Either its backlog (`backlog` tasks, live and delayed) reached the producer's `limit`, or
    Redis itself reached its memory limit (then both are None).
    """

    def __init__(self, queue: str, *, backlog: int | None, limit: int | None) -> None:
        if backlog is None or limit is None:
            detail = "Redis is out of memory (maxmemory reached)"
        else:
            detail = f"{backlog} tasks waiting and the limit is {limit}"
        super().__init__(f"queue {queue!r} is full: {detail}; nothing was enqueued")
        self.queue = queue
        self.backlog = backlog
        self.limit = limit


class SmtpUnavailableError(EmailServiceError):
    """No usable SMTP session could be opened (down, refusing us, TLS or AUTH failing).

    It says nothing about the email being sent: the worker pauses instead of using up attempts.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
