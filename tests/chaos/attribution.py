"""Why was an email delivered twice? Each accepted copy is matched with what its worker did next.

Pure functions over what the run recorded: the copies the SMTP server accepted (with the worker
process that sent each), every worker's task log lines, how each worker ended, and when each
fault was active. A copy is *recorded* when its own worker logged the send as settled
(`task_sent` / `task_partly_sent`, not `settled_elsewhere`). Any other copy is a resend risk,
and it is put in the README's duplicate windows ("Delivery guarantee") only on evidence:

- W1: its worker was SIGKILLed (or stopped while cut off from Redis) after the server accepted
  and before any outcome was logged; or the entry was held by two workers at once (one logged
  `settled_elsewhere`) while a Redis fault (restart, pause, link fault) hit one of them, so
  the entry outlived WORKER_RECLAIM_IDLE_SECONDS before its settle;
- W2: the server closed the connection after the final dot instead of replying, or the worker
  logged a timeout or disconnect for that attempt (it never saw the 250);
- W3: as W1's second case, but the fault was the worker itself being frozen (SIGSTOP).

A duplicate (two copies or more) is explained when at most one of its copies is recorded and
every other copy has a window; anything else is reported as unexplained and fails the run.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task event a worker logged: what an attempt ended in."""

    task_id: str
    event: str
    at: float
    settled_elsewhere: bool = False
    reason: str = ""


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
        outcomes.append(
            Outcome(
                task_id=record["task_id"],
                event=record["event"],
                at=at,
                settled_elsewhere=bool(record.get("settled_elsewhere")),
                reason=str(record.get("reason", "")),
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
    next_outcome = _matcher(outcomes)
    verdicts: dict[str, list[str]] = {}
    explained: dict[str, bool] = {}
    for task_id, task_copies in duplicated.items():
        senders = {copy.incarnation for copy in task_copies}
        windows = []
        for copy in task_copies:
            outcome = next_outcome(copy)
            windows.append(
                _window(
                    copy,
                    outcome,
                    senders=senders,
                    endings=endings,
                    disruptions=disruptions,
                    reclaim_idle_s=reclaim_idle_s,
                    task_copies=task_copies,
                )
            )
        verdicts[task_id] = windows
        explained[task_id] = windows.count(RECORDED) <= 1 and not any(
            w.startswith("unexplained") for w in windows
        )
    return Verdicts(verdicts, explained)


def _matcher(outcomes: Mapping[int, Sequence[Outcome]]) -> _NextOutcome:
    per_sender: dict[tuple[int, str], list[Outcome]] = defaultdict(list)
    for incarnation, events in outcomes.items():
        for outcome in sorted(events, key=lambda o: o.at):
            per_sender[incarnation, outcome.task_id].append(outcome)
    return _NextOutcome(per_sender)


class _NextOutcome:
    """The first outcome its worker logged for a task after a copy was accepted, used once."""

    def __init__(self, per_sender: dict[tuple[int, str], list[Outcome]]) -> None:
        self._per_sender = per_sender

    def __call__(self, copy: Copy) -> Outcome | None:
        events = self._per_sender.get((copy.incarnation, copy.task_id), [])
        for n, outcome in enumerate(events):
            if outcome.at >= copy.at - 0.005:  # log stamps and the server's clock: one clock
                del events[: n + 1]
                return outcome
        return None


def _window(  # noqa: PLR0911 - one return per window, in the order the module docstring gives
    copy: Copy,
    outcome: Outcome | None,
    *,
    senders: set[int],
    endings: Mapping[int, tuple[str, float | None]],
    disruptions: Sequence[Disruption],
    reclaim_idle_s: float,
    task_copies: Sequence[Copy],
) -> str:
    if copy.dropped:
        return "W2 dropped after the final dot"
    end, ended_at = endings.get(copy.incarnation, ("", None))
    if outcome is None:
        if end.startswith("SIGKILL") and ended_at is not None and ended_at >= copy.at:
            return "W1 killed between accept and settle"
        stop = ended_at if ended_at is not None else copy.at
        if any(_redis_fault(d) and d.hits([copy.incarnation], copy.at, stop) for d in disruptions):
            return "W1 stopped while cut off from Redis"
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


def _redis_fault(disruption: Disruption) -> bool:
    return disruption.kind.startswith("redis")
