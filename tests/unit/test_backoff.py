"""Backoff delays (doubling from `first`, capped, jittered within the upper half), and which
Redis failures the worker waits out."""

from __future__ import annotations

import pytest
from redis.exceptions import AuthenticationError, ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError

from service.worker import backoff
from service.worker.backoff import backoff_delay


@pytest.mark.parametrize(
    ("first", "cap", "highs"),
    [
        (0.5, 15.0, [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]),
        # The worker's retry defaults: 60 s doubling up to an hour.
        (60.0, 3600.0, [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0]),
    ],
)
def test_backoff_doubles_up_to_a_cap(first: float, cap: float, highs: list[float]) -> None:
    delays = [backoff_delay(n, first=first, cap=cap, jitter=1.0) for n in range(1, 8)]
    assert delays == highs


@pytest.mark.parametrize(("failures", "low"), [(1, 30.0), (3, 120.0), (1000, 1800.0)])
def test_jitter_never_goes_below_half(failures: int, low: float) -> None:
    assert backoff_delay(failures, first=60.0, cap=3600.0, jitter=0.0) == low


def _cluster_unreachable() -> RedisClusterException:
    """What redis-py's cluster client raises when, rebuilding its slot map during a failover,
    it reaches none of its startup nodes (seen in tests/chaos/test_failover.py): the
    connection error is its cause (`raise ... from`)."""
    exc = RedisClusterException("Redis Cluster cannot be connected.")
    exc.__cause__ = RedisConnectionError("Error 111 connecting to 127.0.0.1:7000.")
    return exc


@pytest.mark.parametrize(
    ("error", "waited_out"),
    [
        (RedisConnectionError("refused"), True),
        (ClusterDownError("CLUSTERDOWN"), True),
        (_cluster_unreachable(), True),
        (RedisClusterException("Cluster mode is not enabled on this node"), False),
        (AuthenticationError("invalid password"), False),
    ],
)
async def test_transient_failures_are_waited_out_and_others_raised(
    monkeypatch: pytest.MonkeyPatch, error: Exception, waited_out: bool
) -> None:
    monkeypatch.setattr(backoff, "redis_retry_delay", lambda failures: 0.0)
    outcomes: list[Exception | str] = [error, "done"]

    async def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    if waited_out:
        assert await backoff.retry_while_unavailable("test", call) == "done"
    else:
        with pytest.raises(type(error)):
            await backoff.retry_while_unavailable("test", call)
