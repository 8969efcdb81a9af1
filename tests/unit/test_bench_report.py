"""The benchmark's results page: what a full run writes into bench/results/, and a quick one not."""

from __future__ import annotations

import re
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench.__main__ import RESULTS, Results, parse_options
from bench.report import Row, format_markdown, git_revision, write_markdown

STARTED = datetime(2026, 11, 28, 3, 6, 33, tzinfo=UTC)
INFO = {
    "cpu": "AMD EPYC",
    "cores": 2,
    "kernel": "6.18",
    "os": "Debian GNU/Linux 12 (bookworm)",
    "python": "3.11.7",
    "redis_server": "7.0.15",
    "load_average_at_start": (0.8, 0.5, 0.25),
}
TABLE = "| measurement | value |\n|---|---|\n| floor | 5,485/s |"


def test_the_page_says_when_where_on_what_code_and_how_much() -> None:
    page = format_markdown(
        started=STARTED, info=INFO, revision="abc123", emails=5_000, runs=3, table=TABLE
    )
    assert page.startswith("# Benchmark, 2026-11-28 03:06 UTC\n")
    assert "AMD EPYC, 2 cores, Debian GNU/Linux 12 (bookworm) (Linux 6.18)" in page
    assert "Python 3.11.7, redis-server 7.0.15" in page
    assert "Load average at start (1, 5, 15 min): 0.80, 0.50, 0.25" in page
    assert "5,000 emails per measurement, medians of 3 run(s)" in page
    assert "Commit: abc123" in page
    assert TABLE in page
    assert "```" not in page  # no profile summary given


def test_a_profile_summary_goes_in_a_code_block() -> None:
    page = format_markdown(
        started=STARTED, info=INFO, revision="r", emails=1, runs=1, table=TABLE, extra="a 50%\n"
    )
    assert page.endswith("```\na 50%\n```\n")


def test_pages_are_named_by_utc_minute_and_never_overwritten(tmp_path: Path) -> None:
    first = write_markdown(tmp_path / "results", STARTED, "one")
    second = write_markdown(tmp_path / "results", STARTED, "two")
    assert (first.name, second.name) == ("2026-11-28-0306.md", "2026-11-28-0306-2.md")
    assert (first.read_text(), second.read_text()) == ("one", "two")


def test_only_full_runs_write_a_page() -> None:
    assert parse_options(["--quick"]).quick
    assert not parse_options([]).quick
    assert RESULTS.relative_to(Path(__file__).resolve().parents[2]) == Path("bench/results")


def test_the_revision_is_a_commit() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}( \(with uncommitted changes\))?", git_revision())


class _NoRedis:
    url = "redis://127.0.0.1:1/0"

    def __init__(self, _directory: Path) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _run_without_measuring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]
) -> list[Path]:
    """`python -m bench` as a whole, with the measurements (and their processes) left out."""

    def results_of(coroutine: Coroutine[Any, Any, Results]) -> Results:
        coroutine.close()
        return Results(rows=[Row("floor: redis-py XADD, one per round trip", "-", "5,485/s")])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_main, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench_main, "RedisServer", _NoRedis)
    monkeypatch.setattr("bench.__main__.eventloop.run", results_of)
    monkeypatch.setattr("bench.__main__.signal.signal", lambda *_: None)  # keep pytest's handler
    assert bench_main.main([*argv, "--json", str(tmp_path / "out.json")]) == 0
    return sorted((tmp_path / "results").glob("*.md"))


def test_a_full_run_writes_a_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    [page] = _run_without_measuring(monkeypatch, tmp_path, ["--emails", "10"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-\d{4}\.md", page.name)
    assert "| floor: redis-py XADD, one per round trip | -    | 5,485/s |" in page.read_text()


def test_a_quick_run_writes_no_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _run_without_measuring(monkeypatch, tmp_path, ["--quick"]) == []
