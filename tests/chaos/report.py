"""Judging a run: the figures of the table, and the invariants that fail it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.chaos.attribution import attribute
from tests.chaos.harness import RunFacts

__all__ = ["Summary", "format_table", "summarize"]


@dataclass
class Summary:
    """The figures of one run and the invariants it broke (none: it passed)."""

    seed: int
    enqueued: int = 0
    delivered_once: int = 0
    delivered_twice: int = 0
    delivered_more: int = 0
    duplicate_windows: Counter[str] = field(default_factory=Counter)
    unexplained_duplicates: list[str] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # "#seq" -> window per copy
    dead_meant: int = 0  # emails with a 5xx recipient, dead-lettered as they should be
    rejected: int = 0
    dead_unexpected: list[str] = field(default_factory=list)
    malformed_written: int = 0
    malformed_dead: int = 0
    lost: list[int] = field(default_factory=list)
    drain_s: float = 0.0
    tail_s: float = 0.0  # from the last enqueue to the last delivery
    workers_started: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every invariant held."""
        return not self.failures


def summarize(facts: RunFacts) -> Summary:
    """The figures of `facts`, and every invariant they break."""
    summary = Summary(facts.config.seed, enqueued=len(facts.task_ids))
    copies = Counter(copy.task_id for copy in facts.copies)
    for seq, task_id in sorted(facts.task_ids.items()):
        n = copies[task_id]
        if seq in facts.rejected:
            summary.rejected += 1
            if task_id in facts.dead_by_task and n == 0:
                summary.dead_meant += 1
            elif n:
                summary.failures.append(f"email {seq} has a refused recipient but was delivered")
            else:
                summary.lost.append(seq)
            continue
        summary.delivered_once += n == 1
        summary.delivered_twice += n == 2
        summary.delivered_more += n > 2
        if task_id in facts.dead_by_task:
            summary.dead_unexpected.append(f"#{seq}: {facts.dead_by_task[task_id]}")
        elif n == 0:
            summary.lost.append(seq)
    verdicts = attribute(
        facts.copies,
        facts.outcomes,
        facts.endings,
        facts.disruptions,
        reclaim_idle_s=facts.config.reclaim_idle_s,
    )
    seq_of = {task_id: seq for seq, task_id in facts.task_ids.items()}
    for task_id, windows in verdicts.copies.items():
        summary.duplicate_windows.update(w for w in windows if w != "recorded")
        summary.duplicates[f"#{seq_of.get(task_id)}"] = list(windows)
        if not verdicts.explained[task_id]:
            summary.unexplained_duplicates.append(f"#{seq_of.get(task_id)}: {list(windows)}")
    summary.malformed_written = len(facts.malformed_written)
    summary.malformed_dead = len(set(facts.malformed_written) & facts.dead_malformed)
    summary.drain_s = facts.drain_s
    if facts.copies:
        summary.tail_s = max(c.at for c in facts.copies) - facts.last_enqueue_at
    summary.workers_started = len(facts.endings)
    summary.faults = dict(sorted(facts.fault_counts.items()))
    _check(facts, summary)
    summary.failures += [f"fault not injected: {failed}" for failed in facts.faults_failed]
    return summary


def _check(facts: RunFacts, summary: Summary) -> None:
    failures = summary.failures
    if summary.lost:
        failures.append(f"{len(summary.lost)} emails lost: {summary.lost[:20]}")
    if summary.unexplained_duplicates:
        failures.append(
            f"{len(summary.unexplained_duplicates)} duplicates outside the documented windows: "
            f"{summary.unexplained_duplicates[:5]}"
        )
    if summary.dead_unexpected:
        failures.append(
            f"{len(summary.dead_unexpected)} good emails dead-lettered: "
            f"{summary.dead_unexpected[:5]}"
        )
    if summary.malformed_dead != summary.malformed_written:
        missing = sorted(set(facts.malformed_written) - facts.dead_malformed)
        failures.append(f"malformed entries not dead-lettered: {missing}")
    if not facts.drained:
        failures.append(f"the queue did not drain in time: {facts.leftover}")
    elif any(facts.leftover.values()):
        failures.append(f"the queue is not empty at the end: {facts.leftover}")
    # The status ledger moves with the task: a delivered email says sent, a refused one dead.
    copies = {copy.task_id for copy in facts.copies}
    disagree = []
    for seq, task_id in sorted(facts.task_ids.items()):
        expected = "dead" if task_id in facts.dead_by_task else "sent" if task_id in copies else ""
        state = facts.status_by_task.get(task_id, "none")
        if expected and state != expected:
            disagree.append(f"#{seq}: {state}, not {expected}")
    if disagree:
        failures.append(f"{len(disagree)} task statuses disagree with the outcome: {disagree[:5]}")
    for number, (end, code) in sorted(facts.exit_codes.items()):
        if end.startswith("exited by itself") or "hung" in end:
            failures.append(f"worker {number} {end} (exit code {code})")
        elif end in ("SIGTERM", "stopped at the end") and code != 0:
            failures.append(f"worker {number} stopped by SIGTERM exited with {code}, not 0")


def format_table(summaries: Sequence[Summary]) -> str:
    """A Markdown table, one column per seed."""

    def row(name: str, figure: Callable[[Summary], str]) -> tuple[str, list[str]]:
        return name, [figure(s) for s in summaries]

    rows = [
        row("emails enqueued", lambda s: f"{s.enqueued:,}"),
        row("delivered once", lambda s: f"{s.delivered_once:,}"),
        row("delivered twice (3 times or more)", _twice),
    ]
    for window in sorted({w for s in summaries for w in s.duplicate_windows}):
        rows.append(row(f"- copies in {window}", _count_of(window)))
    rows += [
        row("- duplicates outside the windows", lambda s: str(len(s.unexplained_duplicates))),
        row("dead-lettered: 5xx recipient (meant to)", lambda s: f"{s.dead_meant}/{s.rejected}"),
        row(
            "dead-lettered: malformed entry (meant to)",
            lambda s: f"{s.malformed_dead}/{s.malformed_written}",
        ),
        row("dead-lettered: not meant to", lambda s: str(len(s.dead_unexpected))),
        row("**lost**", lambda s: f"**{len(s.lost)}**"),
        row("time to drain after the faults end", lambda s: f"{s.drain_s:.1f} s"),
        row("last enqueue to last delivery", lambda s: f"{s.tail_s:.1f} s"),
        row("worker processes started", lambda s: str(s.workers_started)),
    ]
    kinds = sorted({k for s in summaries for k in s.faults})
    rows += [(f"fault: {k}", [str(s.faults.get(k, 0)) for s in summaries]) for k in kinds]
    rows.append(("result", ["pass" if s.passed else "**FAIL**" for s in summaries]))
    header = ["seed", *(str(s.seed) for s in summaries)]
    widths = [max(len(r[0]) for r in [*rows, (header[0], [])])]
    widths += [
        max(len(header[i + 1]), *(len(r[1][i]) for r in rows)) for i in range(len(summaries))
    ]
    lines = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_row([name, *values], widths) for name, values in rows]
    return "\n".join(lines)


def _count_of(window: str) -> Callable[[Summary], str]:
    return lambda summary: str(summary.duplicate_windows[window])


def _twice(summary: Summary) -> str:
    more = f" ({summary.delivered_more})" if summary.delivered_more else ""
    return f"{summary.delivered_twice}{more}"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    first = f" {cells[0]:<{widths[0]}} "
    rest = (f" {cell:>{width}} " for cell, width in zip(cells[1:], widths[1:], strict=True))
    return "|" + "|".join([first, *rest]) + "|"


def print_failures(summary: Summary) -> None:
    """Every broken invariant of a run, one per line (on stdout, next to the table)."""
    for failure in summary.failures:
        print(f"seed {summary.seed}: FAIL: {failure}")
