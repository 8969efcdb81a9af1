"""The package's one exception tree.

Every error carries its data as attributes so callers can act on it without parsing messages,
and no message ever contains a secret (passwords, credential-bearing URLs, message bodies).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmailServiceError",
    "EnqueueError",
    "QueueFull",
    "QueueUnavailable",
    "QueueVanished",
    "RedisFull",
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


class EnqueueError(EmailServiceError):
    """Enqueueing failed. `maybe_enqueued` says whether the task(s) may be in the queue anyway:
    when True, retry with the same idempotency key to be sure of one email, not two."""

    maybe_enqueued: bool = False

    def __init__(self, queue: str, message: str) -> None:
        super().__init__(message)
        self.queue = queue


class QueueFull(EnqueueError):
    """The queue cannot take more tasks; nothing was enqueued. Retry later.

    Either its backlog (`backlog` tasks, live and delayed) reached the producer's `limit`, or
    Redis itself reached its memory limit (then both are None).
    """

    def __init__(self, queue: str, *, backlog: int | None, limit: int | None) -> None:
        if backlog is None or limit is None:
            detail = "Redis is out of memory (maxmemory reached)"
        else:
            detail = f"{backlog} tasks waiting and the limit is {limit}"
        super().__init__(queue, f"queue {queue!r} is full: {detail}; nothing was enqueued")
        self.backlog = backlog
        self.limit = limit


class QueueUnavailable(EnqueueError, ConnectionError):
    """Redis could not be reached, refused us, or did not answer in time.

    `reason` is Redis's or redis-py's word for it (never a password); the redis-py exception is
    the `__cause__`. `maybe_enqueued` is True when the command may have run (a reply that never
    came, a connection lost after the command was sent), False when it cannot have (no
    connection, wrong credentials, a refused command).
    """

    def __init__(
        self, queue: str, *, reason: str, maybe_enqueued: bool, action: str = "enqueued"
    ) -> None:
        # `action`: what the failed call would have done ("cancelled", "changed" for a read).
        outcome = f"it may have been {action}" if maybe_enqueued else f"nothing was {action}"
        super().__init__(queue, f"queue {queue!r} is unavailable: {reason}; {outcome}")
        self.reason = reason
        self.maybe_enqueued = maybe_enqueued


class QueueVanished(EmailServiceError):
    """The queue's stream or its consumer group no longer exists: Redis restarted without
    persistence, or someone deleted them. `stream` names the key."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"the stream {stream!r} or its consumer group is gone")
        self.stream = stream


class RedisFull(EmailServiceError):
    """Redis refused a write because it reached `maxmemory` (policy `noeviction`): nothing was
    written. Writes that free memory (acknowledging, deleting) still go through.

    The figures are Redis's own at the refusal (`INFO memory`); None where it would not say.
    """

    def __init__(
        self, operation: str, *, used_memory: int | None, maxmemory: int | None, policy: str | None
    ) -> None:
        super().__init__(
            f"Redis refused {operation}: out of memory "
            f"(used_memory {used_memory}, maxmemory {maxmemory}, policy {policy})"
        )
        self.operation = operation
        self.used_memory = used_memory
        self.maxmemory = maxmemory
        self.policy = policy


class SmtpUnavailableError(EmailServiceError):
    """No usable SMTP session could be opened (down, refusing us, TLS or AUTH failing).

    It says nothing about the email being sent: the worker pauses instead of using up attempts.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
