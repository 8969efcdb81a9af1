"""The Redis keys of a queue, all derived from its name.

Every key carries the queue name as a hash tag (`{emails}:...`) so that on Redis Cluster they
share one slot, which the Lua scripts that move a task between them require.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["CONSUMER_GROUP", "LANES", "Lane", "QueueKeys", "validate_queue_name"]

# One group per queue: every worker of a queue shares the work.
CONSUMER_GROUP: Final = "workers"

Lane = Literal["high", "normal", "low"]
# A task's priority names its lane: a stream of its own, read high first (worker/lanes.py).
LANES: Final[tuple[Lane, ...]] = ("high", "normal", "low")

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def validate_queue_name(name: str) -> str:
    """Return `name` if it can name a queue (no braces: they would break the hash tag)."""
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid queue name: use 1 to 100 letters, digits, '_', '.', ':' or "
            "'-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Names of the Redis keys that hold one queue."""

    queue: str

    def __post_init__(self) -> None:
        validate_queue_name(self.queue)

    @property
    def stream(self) -> str:
        """The stream of live work: entries waiting or being sent."""
        return f"{{{self.queue}}}:stream"

    def lane(self, lane: Lane) -> str:
        """The stream of one priority lane; the normal lane is `stream`, so entries and
        deployments from before lanes existed keep working."""
        return self.stream if lane == "normal" else f"{self.stream}:{lane}"

    @property
    def lanes(self) -> tuple[str, str, str]:
        """The lanes' streams in the order the scripts declare them: normal, high, low."""
        return self.stream, self.lane("high"), self.lane("low")

    @property
    def dead(self) -> str:
        """The dead-letter stream: tasks that will not be sent, with the reason."""
        return f"{{{self.queue}}}:dead"

    @property
    def delayed(self) -> str:
        """Sorted set of task ids waiting for a later send (retries, scheduled sends) by due ms."""
        return f"{{{self.queue}}}:delayed"

    @property
    def delayed_entries(self) -> str:
        """Hash from a delayed task id to its packed stream entry."""
        return f"{{{self.queue}}}:delayed:entries"

    @property
    def workers(self) -> str:
        """Hash from a consumer name to its latest heartbeat (JSON)."""
        return f"{{{self.queue}}}:workers"

    @property
    def limiter(self) -> str:
        """Hash of the shared rate limiter: next slot, effective rate, quota count, limits."""
        return f"{{{self.queue}}}:limiter"

    @property
    def quota(self) -> str:
        """List of the rolling quota's buckets ("bucket:count"), oldest first."""
        return f"{{{self.queue}}}:quota"

    @property
    def relays(self) -> str:
        """Hash from the name of each relay with limits of its own to its limits (JSON), as the
        workers last wrote them (`admin stats` reads the relays' limiters from it)."""
        return f"{{{self.queue}}}:relays"

    def relay_limiter(self, relay: str) -> str:
        """Hash of one relay's own rate limiter (the layout of `limiter`)."""
        return f"{{{self.queue}}}:relay:{relay}:limiter"

    def relay_quota(self, relay: str) -> str:
        """List of one relay's rolling quota buckets (the layout of `quota`)."""
        return f"{{{self.queue}}}:relay:{relay}:quota"

    @property
    def domain_limiter(self) -> str:
        """Hash of the per-domain limits: the configuration, each domain's next free slot."""
        return f"{{{self.queue}}}:domains"

    def domain_kept(self, domain: str) -> str:
        """Sorted set of the task ids set aside for `domain`'s limit, by their kept slot (us)."""
        return f"{{{self.queue}}}:domains:kept:{domain}"

    def minute(self, minute: int | str) -> str:
        """Hash of what the workers did in one minute (`minute`: minutes since the epoch, or
        "*" as a pattern): sent, failed and latency sums, for the dashboard's charts; expires
        two hours after its minute (see `store.history`)."""
        return f"{{{self.queue}}}:minute:{minute}"

    def sent(self, task_id: str) -> str:
        """Marks a task sent while another copy of it may still exist (see `scripts.SETTLE`)."""
        return f"{{{self.queue}}}:sent:{task_id}"

    def status(self, task_id: str) -> str:
        """Hash of the task's status record (see `service.status`), kept a while after its
        last change."""
        return f"{self.status_prefix}{task_id}"

    @property
    def status_prefix(self) -> str:
        """What every status record's key starts with (a script that finds task ids itself
        builds their keys from it; they share the queue's hash tag, so its slot)."""
        return f"{{{self.queue}}}:status:"

    def idempotency(self, key: str) -> str:
        """Holds the id of the task first enqueued with idempotency key `key`."""
        return f"{{{self.queue}}}:idem:{key}"
