"""Log lines: ours and other libraries' come out as one JSON object each."""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import structlog

from service.logs import configure_logging, iso_utc


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_our_lines_and_stdlib_lines_are_json(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json=True)
    structlog.get_logger("service.test").info("task_sent", task_id="abc", attempt=1)
    logging.getLogger("asyncio").warning("library says %s", "hello")
    structlog.get_logger("service.test").debug("filtered_out")
    lines = capfd.readouterr().out.splitlines()
    events = [orjson.loads(line) for line in lines]
    assert len(events) == 2
    assert all({"timestamp", "level", "event"} <= event.keys() for event in events)
    assert events[0]["event"] == "task_sent"
    assert (events[0]["task_id"], events[0]["level"]) == ("abc", "info")
    assert (events[1]["event"], events[1]["level"]) == ("library says hello", "warning")


_SECRET = "hunter2-" + "in-a-frame"  # built, so that no source line shown in a traceback holds it


def _connect(password: str) -> None:
    raise ConnectionError("refused")


@pytest.mark.parametrize("json", [True, False], ids=["json", "console"])
@pytest.mark.parametrize("source", ["structlog", "stdlib"])
def test_tracebacks_never_show_local_variables(
    capfd: pytest.CaptureFixture[str], json: bool, source: str
) -> None:
    # rich is a dev dependency: structlog's console renderer would use it, with locals shown.
    assert importlib.util.find_spec("rich") is not None
    configure_logging(level="INFO", json=json)
    try:
        _connect(_SECRET)
    except ConnectionError:
        if source == "structlog":
            structlog.get_logger("service.test").exception("worker_failed")
        else:  # asyncio's "Task exception was never retrieved", redis-py's own records...
            logging.getLogger("asyncio").error("worker_failed", exc_info=True)
    out = capfd.readouterr().out
    assert "worker_failed" in out
    assert "ConnectionError" in out  # the traceback is there, its frames' locals are not
    assert "_connect" in out
    assert "hunter2-in-a-frame" not in out
    if json and source == "structlog":
        (event,) = [orjson.loads(line) for line in out.splitlines()]
        assert event["exception"][0]["exc_type"] == "ConnectionError"


@pytest.mark.parametrize(
    "nanoseconds",
    [
        0,
        1_764_651_601_000_000_000,  # a whole second: no fraction, as isoformat writes it
        1_764_651_601_000_000_999,  # less than a microsecond past it
        1_764_651_601_250_000_000,
        1_764_651_601_999_999_999,
        1_764_651_602_000_001_000,  # the next second, just after
        4_102_444_800_123_456_789,  # 2100
    ],
)
def test_the_timestamp_is_written_as_structlogs_iso_utc_stamper_writes_it(
    nanoseconds: int,
) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanoseconds // 1000)
    assert iso_utc(nanoseconds) == moment.isoformat().replace("+00:00", "Z")


def test_a_line_is_stamped_with_the_time_it_was_written(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json=True)
    before = datetime.now(UTC)
    structlog.get_logger("service.test").info("task_sent")
    after = datetime.now(UTC)
    (line,) = capfd.readouterr().out.splitlines()
    assert before <= datetime.fromisoformat(orjson.loads(line)["timestamp"]) <= after
