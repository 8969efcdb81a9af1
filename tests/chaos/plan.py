"""What a chaos run does, drawn from its seed before it starts (pure: no I/O, no clock).

The same seed gives the same emails (which ones are refused with a 5xx), the same faults of
the same kinds and lengths against the same worker slots at the same offsets. Processes and
the network still race each other, so a replay repeats the schedule, not every interleaving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "CLUSTER_FAULT_KINDS",
    "FAULT_KINDS",
    "MALFORMED_KINDS",
    "Fault",
    "RunConfig",
    "draw_faults",
    "draw_rejected",
    "fault_kinds",
]

Topology = Literal["single", "cluster"]

# Every kind of fault a run injects at least once (when the run is long enough).
FAULT_KINDS: Final = (
    "worker SIGKILL + restart",
    "worker SIGTERM (deploy)",
    "worker SIGSTOP > reclaim idle",
    "redis restart",
    "redis SIGSTOP > client timeout",
    "redis link latency",
    "redis link stall",
    "redis link reset",
    "redis link blackhole",
    "smtp link latency",
    "smtp link stall",
    "smtp link reset",
    "smtp link blackhole",
    "smtp 4xx storm",
    "smtp slow DATA",
    "smtp drop after final dot",
    "malformed entry",
)
# On a Redis Cluster: the queue's primary is killed and its replica promoted (a failover), in
# place of the faults of THE Redis. A restart is what the failover ends with (the killed node
# comes back, empty, as a replica). Not drawn: a SIGSTOP of a node, which a cluster turns into
# a failover of a frozen primary, and the Redis link faults, whose per-worker proxy cannot stand
# in front of a cluster (the client connects to the nodes the cluster announces).
CLUSTER_FAULT_KINDS: Final = (
    *(kind for kind in FAULT_KINDS if not kind.startswith("redis")),
    "redis failover",
)
# Written straight into the stream, bypassing the producer's validation.
MALFORMED_KINDS: Final = (
    "no version",
    "unknown version",
    "bad JSON",
    "missing task",
    "bad task id",
    "invalid task",
)


@dataclass(frozen=True)
class RunConfig:
    """The shape of one run; everything random in it comes from `seed`."""

    seed: int
    duration_s: float = 20.0  # faults are injected during this window
    emails: int = 1200
    producers: int = 3
    workers: int = 3
    redis_pause_s: float = 4.0  # the worker's Redis socket timeout is 10 s: use 12 for the long run
    max_fault_s: float = 5.0  # upper bound on the length of a link fault or storm
    mean_fault_gap_s: float = 1.0
    rejected_ratio: float = 0.02  # emails whose recipient the SMTP server refuses with 5xx
    drain_timeout_s: float = 60.0
    worker_module: str = "service.worker"  # the broken-worker test swaps in a faulty one
    reclaim_idle_s: float = 3.0
    smtp_timeout_s: float = 2.0
    oversized_entry: bool = True  # one `task` field over 16 MiB
    topology: Topology = "single"  # one redis-server (AOF), or a 3+3 cluster (failovers)
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: what, when (seconds into the run), for how long, against which worker slot."""

    at_s: float
    kind: str
    length_s: float = 0.0
    slot: int = 0  # picks among the workers alive when the fault fires
    latency_s: float = 0.0
    count: int = 0  # messages to drop after the final dot
    variant: str = ""  # the malformed entry's kind


def draw_rejected(config: RunConfig) -> frozenset[int]:
    """The email numbers whose recipient the server refuses (they must be dead-lettered)."""
    rng = random.Random(f"{config.seed}:rejected")
    return frozenset(seq for seq in range(config.emails) if rng.random() < config.rejected_ratio)


def fault_kinds(topology: Topology) -> tuple[str, ...]:
    """The kinds of fault a run on `topology` draws from."""
    return CLUSTER_FAULT_KINDS if topology == "cluster" else FAULT_KINDS


def draw_faults(config: RunConfig) -> list[Fault]:
    """The faults of a run, in time order: each kind once, then random ones to fill the window."""
    rng = random.Random(f"{config.seed}:faults")
    every = fault_kinds(config.topology)
    count = max(len(every), int(config.duration_s / config.mean_fault_gap_s))
    kinds = list(every)
    kinds += rng.choices(every, k=count - len(kinds))
    rng.shuffle(kinds)
    # Offsets leave the first second for start-up and the last one for the tail of the load.
    offsets = sorted(rng.uniform(1.0, max(config.duration_s - 1.0, 1.5)) for _ in kinds)
    return [
        _draw(kind, at, config, rng, n)
        for n, (kind, at) in enumerate(zip(kinds, offsets, strict=True))
    ]


def _draw(  # noqa: PLR0911 - one return per kind of fault reads best
    kind: str, at: float, config: RunConfig, rng: random.Random, n: int
) -> Fault:
    longest = config.max_fault_s
    slot = rng.randrange(1 << 16)
    if kind == "worker SIGSTOP > reclaim idle":
        return Fault(at, kind, config.reclaim_idle_s + rng.uniform(0.5, 2.0), slot)
    if kind == "redis restart":
        return Fault(at, kind, rng.uniform(0.2, 2.0))
    if kind == "redis SIGSTOP > client timeout":
        return Fault(at, kind, config.redis_pause_s)
    if kind.endswith("latency"):
        return Fault(at, kind, rng.uniform(1.0, longest), slot, latency_s=rng.uniform(0.02, 0.25))
    if kind.endswith(("stall", "blackhole")):
        return Fault(at, kind, rng.uniform(1.0, longest), slot)
    if kind.endswith("reset"):
        return Fault(at, kind, rng.uniform(0.1, 1.0), slot)
    if kind == "smtp 4xx storm":
        return Fault(at, kind, rng.uniform(0.5, longest / 2))
    if kind == "smtp slow DATA":
        # Mostly under SMTP_TIMEOUT_SECONDS; the tail goes over it (the reply then comes late).
        return Fault(at, kind, rng.uniform(1.0, longest), latency_s=rng.uniform(0.2, 2.2))
    if kind == "smtp drop after final dot":
        return Fault(at, kind, count=rng.randint(1, 5))
    if kind == "malformed entry":
        return Fault(at, kind, variant=MALFORMED_KINDS[n % len(MALFORMED_KINDS)])
    return Fault(at, kind, slot=slot)  # worker SIGKILL, SIGTERM
