"""The chaos harness under `make test`: a short run must pass, and a broken worker must fail it;
the same on a Redis Cluster with failovers.

The long runs (`make chaos`, `make chaos TOPOLOGY=cluster`) are run by hand; their figures are
in docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.chaos.__main__ import run_and_judge
from tests.chaos.attribution import Disruption, Outcome, attribute
from tests.chaos.mailserver import Copy
from tests.chaos.plan import (
    CLUSTER_FAULT_KINDS,
    FAULT_KINDS,
    RunConfig,
    draw_faults,
    draw_rejected,
)
from tests.chaos.report import format_table

# About 20 s of faults, a few seconds of drain: the whole test stays well under a minute.
SHORT = RunConfig(seed=20261127, duration_s=18.0, emails=900, producers=3, workers=3)


@pytest.mark.timeout(110)
async def test_a_short_chaos_run_loses_nothing_and_every_duplicate_is_explained(
    tmp_path: Path,
) -> None:
    summary = await run_and_judge(SHORT, tmp_path)
    print(format_table([summary]))  # shown by pytest when the test fails
    assert summary.failures == []
    assert summary.lost == []
    assert summary.enqueued == SHORT.emails
    assert summary.dead_meant == summary.rejected > 0
    assert summary.malformed_dead == summary.malformed_written > 0
    assert set(FAULT_KINDS) <= set(summary.faults)


@pytest.mark.timeout(110)
async def test_a_worker_that_acknowledges_before_sending_fails_the_run(tmp_path: Path) -> None:
    config = RunConfig(
        seed=7,
        duration_s=10.0,
        emails=400,
        workers=2,
        oversized_entry=False,
        worker_module="tests.chaos.broken_worker",
    )
    summary = await run_and_judge(config, tmp_path)
    assert not summary.passed
    assert summary.lost, summary.failures  # 4xx storms and kills lose emails it acked early
    assert any("emails lost" in failure for failure in summary.failures)


# Its seed draws two failovers (at 4.6 and 11.3 s): the second one kills the node the first
# one promoted, whose replica is the node the first one killed, back as a replica.
CLUSTER = replace(SHORT, seed=6, topology="cluster")


@pytest.mark.timeout(150)
async def test_a_short_chaos_run_on_a_cluster_loses_nothing_through_failovers(
    tmp_path: Path,
) -> None:
    summary = await run_and_judge(CLUSTER, tmp_path)
    print(format_table([summary]))
    assert summary.failures == []
    assert summary.lost == []
    assert summary.enqueued == CLUSTER.emails
    assert summary.faults["redis failover"] == 2
    assert set(CLUSTER_FAULT_KINDS) <= set(summary.faults)


@pytest.mark.failover
@pytest.mark.timeout(150)
async def test_a_worker_that_acknowledges_before_sending_fails_a_cluster_run(
    tmp_path: Path,
) -> None:
    config = RunConfig(
        seed=5,
        duration_s=10.0,
        emails=400,
        workers=2,
        oversized_entry=False,
        worker_module="tests.chaos.broken_worker",
        topology="cluster",
    )
    summary = await run_and_judge(config, tmp_path)
    assert summary.lost, summary.failures
    assert any("emails lost" in failure for failure in summary.failures)


def test_a_cluster_plan_fails_over_instead_of_touching_the_one_redis() -> None:
    kinds = {fault.kind for fault in draw_faults(CLUSTER)}
    assert kinds == set(CLUSTER_FAULT_KINDS)
    assert "redis failover" in kinds
    assert not kinds & {"redis restart", "redis SIGSTOP > client timeout", "redis link stall"}
    assert "redis failover" not in FAULT_KINDS  # the default plan is unchanged


def test_the_plan_is_a_function_of_the_seed() -> None:
    assert draw_faults(SHORT) == draw_faults(SHORT)
    assert draw_rejected(SHORT) == draw_rejected(SHORT)
    other = RunConfig(seed=SHORT.seed + 1, duration_s=SHORT.duration_s, emails=SHORT.emails)
    assert draw_faults(other) != draw_faults(SHORT)
    assert {fault.kind for fault in draw_faults(SHORT)} == set(FAULT_KINDS)


def _copy(at: float, incarnation: int, *, dropped: bool = False) -> Copy:
    return Copy(seq=1, task_id="t", incarnation=incarnation, at=at, dropped=dropped)


def _sent(at: float, *, elsewhere: bool = False) -> Outcome:
    return Outcome("t", "task_sent", at, settled_elsewhere=elsewhere)


ALIVE = ("stopped at the end", None)


@pytest.mark.parametrize(
    ("copies", "outcomes", "endings", "disruptions", "windows", "explained"),
    [
        # A drop after the final dot, then the retry that got its 250.
        (
            [_copy(1.0, 0, dropped=True), _copy(2.0, 0)],
            {
                0: [
                    Outcome("t", "task_retry_scheduled", 1.1, reason="SMTPServerDisconnected"),
                    _sent(2.1),
                ]
            },
            {0: ALIVE},
            [],
            ["W2 dropped after the final dot", "recorded"],
            True,
        ),
        # Killed after the server accepted, before any outcome; another worker resent it.
        (
            [_copy(1.0, 0), _copy(5.0, 1)],
            {0: [], 1: [_sent(5.1)]},
            {0: ("SIGKILL", 1.2), 1: ALIVE},
            [],
            ["W1 killed between accept and settle", "recorded"],
            True,
        ),
        # Killed with its final dot in a slow SMTP link: the dot reached the server after the
        # kill (the proxy forwards what it read), and another worker resent it.
        (
            [_copy(1.13, 0), _copy(9.0, 1)],
            {0: [], 1: [_sent(9.1)]},
            {0: ("SIGKILL", 1.0), 1: ALIVE},
            [Disruption("smtp link latency", 0.5, 7.0, 0)],
            ["W1 killed between accept and settle", "recorded"],
            True,
        ),
        # Killed with its final dot in the harness's SMTP proxy and no link fault: the proxy
        # forwarded it just after the kill was recorded (seed 3, 2026-12-02: 0.13 ms after).
        (
            [_copy(1.0002, 0), _copy(9.0, 1)],
            {0: [], 1: [_sent(9.1)]},
            {0: ("SIGKILL", 1.0), 1: ALIVE},
            [],
            ["W1 killed between accept and settle", "recorded"],
            True,
        ),
        # A copy from a killed worker accepted long after the kill, with no link to hold it:
        # nothing explains it.
        (
            [_copy(3.0, 0), _copy(9.0, 1)],
            {0: [], 1: [_sent(9.1)]},
            {0: ("SIGKILL", 1.0), 1: ALIVE},
            [],
            ["unexplained: no outcome logged (worker SIGKILL)", "recorded"],
            False,
        ),
        # Cut off from Redis past the reclaim idle time: its late settle lost the race.
        (
            [_copy(1.0, 0), _copy(4.5, 1)],
            {0: [_sent(9.0, elsewhere=True)], 1: [_sent(4.6)]},
            {0: ALIVE, 1: ALIVE},
            [Disruption("redis link stall", 0.9, 8.9, 0)],
            ["W1 lost Redis around the settle", "recorded"],
            True,
        ),
        # The SMTP link stalled mid-DATA: the worker timed out and scheduled a retry, then the
        # link let the final dot through; the retry (same worker) was sent again.
        (
            [_copy(3.5, 0), _copy(4.0, 0)],
            {
                0: [
                    Outcome("t", "task_retry_scheduled", 3.0, reason="SMTP send timed out"),
                    _sent(4.1),
                ]
            },
            {0: ALIVE},
            [Disruption("smtp link stall", 1.0, 3.4, 0)],
            ["W2 final dot arrived after the worker gave up", "recorded"],
            True,
        ),
        # An outcome is logged once its settle returns, and with ?wait_replicas= that waits for
        # a replica: the retry the 450 scheduled was read and sent (the copy at 7.19) before
        # the 450's line (7.2). The copy is the later attempt's, which settled it as sent.
        (
            [_copy(0.3, 0, dropped=True), _copy(7.19, 1)],
            {
                1: [
                    Outcome("t", "task_retry_scheduled", 7.2, reason="450 busy", started=0.5),
                    Outcome("t", "task_sent", 9.2, started=7.16),
                ]
            },
            {0: ALIVE, 1: ALIVE},
            [],
            ["W2 dropped after the final dot", "recorded"],
            True,
        ),
        # The other way round: the reply to the first copy was lost and the retry was read and
        # sent (1.5) before the first attempt's line (2.0): each copy has its own attempt.
        (
            [_copy(1.0, 0), _copy(1.5, 0)],
            {
                0: [
                    Outcome(
                        "t",
                        "task_retry_scheduled",
                        2.0,
                        reason="SMTPServerDisconnected",
                        started=0.5,
                    ),
                    Outcome("t", "task_sent", 2.5, started=1.4),
                ]
            },
            {0: ALIVE},
            [],
            ["W2 reply to the final dot lost", "recorded"],
            True,
        ),
        # No outcome and no fault to explain it.
        (
            [_copy(3.5, 0), _copy(4.0, 0)],
            {
                0: [
                    Outcome("t", "task_retry_scheduled", 3.0, reason="SMTP send timed out"),
                    _sent(4.1),
                ]
            },
            {0: ALIVE},
            [],
            ["unexplained: no outcome logged (worker stopped at the end)", "recorded"],
            False,
        ),
        # The same race with no fault anywhere near it: a bug, not a window.
        (
            [_copy(1.0, 0), _copy(4.5, 1)],
            {0: [_sent(9.0, elsewhere=True)], 1: [_sent(4.6)]},
            {0: ALIVE, 1: ALIVE},
            [Disruption("redis link stall", 20.0, 25.0, 0)],
            ["unexplained: settled elsewhere with no fault to explain it", "recorded"],
            False,
        ),
        # Both settled as sent, the first just before the queue's primary was killed: its
        # settle's WAIT timed out, the settle stood on the dying primary only, and the promoted
        # replica still had the entry pending, which another worker reclaimed and sent.
        (
            [_copy(1.0, 0), _copy(6.0, 1)],
            {0: [_sent(2.1)], 1: [_sent(6.1)]},
            {0: ALIVE, 1: ALIVE},
            [Disruption("redis failover", 2.3, 9.0)],
            ["W1 settle lost in a failover", "recorded"],
            True,
        ),
        # Two copies both settled as sent: sent again after being recorded.
        (
            [_copy(1.0, 0), _copy(3.0, 1)],
            {0: [_sent(1.1)], 1: [_sent(3.1)]},
            {0: ALIVE, 1: ALIVE},
            [],
            ["recorded", "recorded"],
            False,
        ),
    ],
)
def test_duplicates_are_put_in_a_window_only_on_evidence(
    *,
    copies: list[Copy],
    outcomes: dict[int, list[Outcome]],
    endings: dict[int, tuple[str, float | None]],
    disruptions: list[Disruption],
    windows: list[str],
    explained: bool,
) -> None:
    verdicts = attribute(copies, outcomes, endings, disruptions, reclaim_idle_s=3.0)
    assert list(verdicts.copies["t"]) == windows
    assert verdicts.explained["t"] is explained
