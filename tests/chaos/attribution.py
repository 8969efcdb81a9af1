"""Why was an email delivered twice? Each accepted copy is matched with what its worker did next.

Pure functions over what the run recorded: the copies the SMTP server accepted (with the worker
process that sent each), every worker's task log lines, how each worker ended, and when each
fault was active. A copy is *recorded* when its own worker logged the send as settled
(`task_sent` / `task_partly_sent`, not `settled_elsewhere`). Any other copy is a resend risk,
and it is put in the README's duplicate windows ("Delivery guarantee") only on evidence:

- W1: its worker was SIGKILLed after the server accepted and before any outcome was logged (or
  just before the server accepted: the final dot still in the harness's SMTP proxy, or held
  in a faulted SMTP link), or
  SIGTERMed (a deploy) while cut off from Redis, so its settle was never written; or the entry
  was held by two workers at once (one logged `settled_elsewhere`) while a Redis fault
  (restart, pause, link fault) hit one of them, so the entry outlived
  WORKER_RECLAIM_IDLE_SECONDS before its settle;
- W2: the server closed the connection after the final dot instead of replying, or the worker
  logged a timeout or disconnect for that attempt (it never saw the 250), or a stalled SMTP
  link delivered the final dot after the worker had timed out and logged the failure;
- W3: as W1's second case, but the fault was the worker itself being frozen (SIGSTOP).

On a cluster a failover is one more W1 case: a copy recorded as sent whose settle the promoted
replica never got (the primary was killed within the settle's WAIT timeout of its line), and
the entry sent again from there ("settle lost in a failover"); the other W1 cases count a
failover as a Redis fault.

A duplicate (two copies or more) is explained when at most one of its copies is recorded and
every other copy has a window; anything else is reported as unexplained and fails the run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import orjson

from tests.chaos.mailserver import Copy

__all__ = ["Disruption", "Outcome", "Verdicts", "attribute", "parse_outcomes"]

RECORDED: Final = "recorded"
_OUTCOME_EVENTS: Final = frozenset(
    {
        "task_sent",
        "task_partly_sent",
        "task_retry_scheduled",
        "task_requeued",
        "task_dead_lettered",
        "task_interrupted",
        "task_error",
    }
)
# Failure reasons meaning the worker never got the server's reply to the final dot.
_REPLY_LOST: Final = ("timed out", "Disconnected", "Connection", "Reset", "closed", "EOF")
_SLACK_S: Final = 1.0  # clock and scheduling slack around a fault's edges
# After SIGTERM a worker's fate writes get WORKER_SHUTDOWN_SECONDS (3 in a run) plus 5 s.
_FATE_GRACE_S: Final = 8.0
# With ?wait_replicas=, a settle that no replica confirmed within this (the default
# wait_timeout_ms) stands on the primary alone: a failover then loses it.
_WAIT_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task event a worker logged: what an attempt ended in."""

    task_id: str
    event: str
    at: float
    settled_elsewhere: bool = False
    reason: str = ""
    started: float | None = None  # when the attempt began (its line's duration_ms before `at`)


@dataclass(frozen=True, slots=True)
class Disruption:
    """A fault while it was active; `incarnation` None means every worker felt it."""

    kind: str
    start: float
    end: float
    incarnation: int | None = None

    def hits(self, incarnations: Iterable[int], start: float, end: float) -> bool:
        """Whether it touched one of `incarnations` during [start, end]."""
        touched = self.incarnation is None or self.incarnation in set(incarnations)
        return touched and self.start <= end + _SLACK_S and self.end >= start - _SLACK_S


@dataclass(frozen=True)
class Verdicts:
    """Per task with two copies or more: each copy's window (or RECORDED) and the verdict."""

    copies: Mapping[str, Sequence[str]]
    explained: Mapping[str, bool]


def parse_outcomes(lines: Iterable[str]) -> list[Outcome]:
    """The task outcome events in one worker's JSON log (torn last lines are skipped)."""
    outcomes = []
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a SIGKILL can cut the last line short
        if record.get("event") not in _OUTCOME_EVENTS or "task_id" not in record:
            continue
        at = datetime.fromisoformat(record["timestamp"]).timestamp()
        duration_ms = record.get("duration_ms")
        outcomes.append(
            Outcome(
                task_id=record["task_id"],
                event=record["event"],
                at=at,
                settled_elsewhere=bool(record.get("settled_elsewhere")),
                reason=str(record.get("reason", "")),
                started=None if duration_ms is None else at - float(duration_ms) / 1000,
            )
        )
    return outcomes


def attribute(
    copies: Sequence[Copy],
    outcomes: Mapping[int, Sequence[Outcome]],
    endings: Mapping[int, tuple[str, float | None]],
    disruptions: Sequence[Disruption],
    *,
    reclaim_idle_s: float,
) -> Verdicts:
    """Classify every copy of every email the server accepted more than once."""
    by_task: dict[str, list[Copy]] = defaultdict(list)
    for copy in copies:
        by_task[copy.task_id].append(copy)
    duplicated = {task: sorted(c, key=lambda c: c.at) for task, c in by_task.items() if len(c) > 1}
    verdicts: dict[str, list[str]] = {}
    explained: dict[str, bool] = {}
    for task_id, task_copies in duplicated.items():
        senders = {copy.incarnation for copy in task_copies}
        matches = _match(task_copies, outcomes)
        windows = []
        for copy in task_copies:
            outcome, before = matches[copy]
            windows.append(
                _window(
                    copy,
                    outcome,
                    given_up=before,
                    senders=senders,
                    endings=endings,
                    disruptions=disruptions,
                    reclaim_idle_s=reclaim_idle_s,
                    task_copies=task_copies,
                )
            )
        _settles_lost_in_failovers(windows, [matches[c][0] for c in task_copies], disruptions)
        verdicts[task_id] = windows
        explained[task_id] = windows.count(RECORDED) <= 1 and not any(
            w.startswith("unexplained") for w in windows
        )
    return Verdicts(verdicts, explained)


def _match(
    copies: Sequence[Copy], outcomes: Mapping[int, Sequence[Outcome]]
) -> dict[Copy, tuple[Outcome | None, Outcome | None]]:
    """Per copy: the outcome of its attempt and the last outcome before it, same worker.

    The outcome of the attempt that produced a copy is one its worker logged for the task after
    the copy, of an attempt that began before it; of those, the attempt that began last. An
    outcome is logged once its settle returns, and with `?wait_replicas=` that waits for a
    replica: the next attempt (a retry read at once) may send its copy before the previous one
    is logged, so attempts are told apart by when they began (the line's `duration_ms`). An
    outcome without a start (a table's) counts only until that worker's next copy of the task.
    """
    per_sender: dict[tuple[int, str], list[Outcome]] = defaultdict(list)
    for incarnation, events in outcomes.items():
        for outcome in events:
            per_sender[incarnation, outcome.task_id].append(outcome)
    matched: dict[Copy, tuple[Outcome | None, Outcome | None]] = {}
    for copy in copies:
        events = sorted(per_sender.get((copy.incarnation, copy.task_id), []), key=lambda o: o.at)
        later = [c.at for c in copies if c.incarnation == copy.incarnation and c.at > copy.at]
        until = min(later, default=float("inf"))
        # Log stamps and the server's clock are one clock; 5 ms covers rounding.
        after = [
            o
            for o in events
            if o.at >= copy.at - 0.005
            and (o.at < until if o.started is None else o.started < copy.at)
        ]
        attempt = max(after, key=_began_then_logged, default=None)
        before = [o for o in events if o.at < copy.at - 0.005]
        matched[copy] = (attempt, before[-1] if before else None)
    return matched


def _settles_lost_in_failovers(
    windows: list[str], outcomes: Sequence[Outcome | None], disruptions: Sequence[Disruption]
) -> None:
    """Every recorded copy but the last whose settle a failover may have lost: the queue's
    primary was killed within the settle's WAIT timeout (plus slack) of its outcome's line."""
    recorded = [n for n, window in enumerate(windows) if window == RECORDED]
    for n in recorded[:-1]:
        outcome = outcomes[n]
        if outcome is not None and any(
            d.kind == "redis failover"
            and outcome.at - _WAIT_TIMEOUT_S - _SLACK_S <= d.start <= outcome.at + _SLACK_S
            for d in disruptions
        ):
            windows[n] = "W1 settle lost in a failover"


def _began_then_logged(outcome: Outcome) -> tuple[float, float]:
    """Sorts the attempt that began last highest; among equals, the one logged first."""
    return (-math.inf if outcome.started is None else outcome.started, -outcome.at)


def _window(  # noqa: PLR0911 - one return per window, in the order the module docstring gives
    copy: Copy,
    outcome: Outcome | None,
    *,
    senders: set[int],
    endings: Mapping[int, tuple[str, float | None]],
    disruptions: Sequence[Disruption],
    reclaim_idle_s: float,
    task_copies: Sequence[Copy],
    given_up: Outcome | None,
) -> str:
    if copy.dropped:
        return "W2 dropped after the final dot"
    end, ended_at = endings.get(copy.incarnation, ("", None))
    if outcome is None:
        # The SMTP proxy between a worker and the server runs in the harness, which records
        # the kill: a final dot written just before the kill may be forwarded just after it.
        if end.startswith("SIGKILL") and ended_at is not None and copy.at <= ended_at + _SLACK_S:
            return "W1 killed between accept and settle"
        if (
            end.startswith("SIGKILL")
            and ended_at is not None
            and any(
                d.kind.startswith("smtp link") and d.hits([copy.incarnation], ended_at, copy.at)
                for d in disruptions
            )
        ):
            # Its final dot was in a slow or stalled SMTP link when it was killed: the proxy
            # forwarded it to the server afterwards.
            return "W1 killed between accept and settle"
        if (
            end == "SIGTERM"
            and ended_at is not None
            and any(
                _redis_fault(d) and d.hits([copy.incarnation], ended_at, ended_at + _FATE_GRACE_S)
                for d in disruptions
            )
        ):
            return "W1 stopped while cut off from Redis"
        if _dot_arrived_late(copy, given_up, disruptions):
            return "W2 final dot arrived after the worker gave up"
        return f"unexplained: no outcome logged (worker {end or 'still running'})"
    if outcome.event in ("task_sent", "task_partly_sent"):
        if not outcome.settled_elsewhere:
            return RECORDED
        # Two workers held the entry: one of them outlived the reclaim idle time unsettled.
        start = min(c.at for c in task_copies) - reclaim_idle_s - 1.0
        end_at = max(outcome.at, *(c.at for c in task_copies))
        hit = [d for d in disruptions if d.hits(senders, start, end_at)]
        if any(d.kind.startswith("worker SIGSTOP") for d in hit):
            return "W3 frozen past the reclaim idle time"
        if any(_redis_fault(d) for d in hit):
            return "W1 lost Redis around the settle"
        return "unexplained: settled elsewhere with no fault to explain it"
    if outcome.event == "task_interrupted":
        return "W1 stopped between accept and settle"
    if outcome.event != "task_error" and any(word in outcome.reason for word in _REPLY_LOST):
        return "W2 reply to the final dot lost"
    return f"unexplained: accepted, but the worker logged {outcome.event} ({outcome.reason})"


def _dot_arrived_late(
    copy: Copy, given_up: Outcome | None, disruptions: Sequence[Disruption]
) -> bool:
    """A stalled SMTP link held the message; the worker timed out and went on; the link then
    delivered the final dot to the server: the worker sent it and never got the reply."""
    if given_up is None or not any(word in given_up.reason for word in _REPLY_LOST):
        return False
    return any(
        d.kind.startswith("smtp link") and d.hits([copy.incarnation], given_up.at, copy.at)
        for d in disruptions
    )


def _redis_fault(disruption: Disruption) -> bool:
    return disruption.kind.startswith("redis")
