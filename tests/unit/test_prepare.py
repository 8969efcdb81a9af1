"""What the producers do before Redis: the per-email size budget, as a table (what counts, and
the error that names the field), and each task's id."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service import Attachment, EmailTask, EmailTooLarge, EnqueueError
from service.producer.prepare import DEFAULT_MAX_EMAIL_BYTES, Limits, new_tasks
from service.status import is_task_id
from service.worker.render import _base64_lines


def _task(**fields: object) -> EmailTask:
    return EmailTask(**{"to": "a@example.com", "subject": "s", "text": "t", **fields})


def _file(size: int) -> Attachment:
    return Attachment(filename="f.bin", content=b"\xff" * size)


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 1_000, 76 * 3 * 1000 + 1])
def test_an_attachment_counts_as_its_base64_lines(size: int) -> None:
    task = _task(text="", attachments=[_file(size)])
    # Exactly what the renderer writes for the file: 76 characters and CRLF a line.
    assert task.encoded_size() == len(_base64_lines(b"\xff" * size))


def test_bodies_count_as_utf8() -> None:
    assert _task(text="é" * 10, html="<b>x</b>").encoded_size() == 20 + 8


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"attachments": [_file(900)]}, "attachments"),
        ({"text": "x" * 1_300}, "text"),
        ({"html": "x" * 1_300, "attachments": [_file(300)]}, "html"),
    ],
)
def test_an_email_past_the_budget_is_refused_naming_its_largest_field(
    fields: dict[str, object], field: str
) -> None:
    small = _task()
    with pytest.raises(EmailTooLarge) as caught:
        new_tasks([small, _task(**fields)], queue="q", max_email_bytes=1_200)
    error = caught.value
    assert isinstance(error, EnqueueError)
    assert isinstance(error, ValueError)
    assert (error.field, error.limit, error.queue, error.maybe_enqueued) == (
        field,
        1_200,
        "q",
        False,
    )
    assert error.size > 1_200
    assert str(error).startswith(f"{field}: the email takes {error.size} bytes")
    assert len(new_tasks([small], queue="q", max_email_bytes=1_200)) == 1


def test_the_budget_must_be_positive() -> None:
    assert Limits.checked(None, timedelta(hours=1)).max_email_bytes == DEFAULT_MAX_EMAIL_BYTES
    with pytest.raises(ValueError, match="max_email_bytes must be at least 1, not 0"):
        Limits.checked(None, timedelta(hours=1), 0)


def test_each_task_gets_a_new_id_of_the_task_id_shape() -> None:
    tasks = new_tasks([_task()] * 1000, queue="q", max_email_bytes=DEFAULT_MAX_EMAIL_BYTES)
    ids = [task.task_id for task in tasks]
    assert all(is_task_id(task_id) for task_id in ids)
    assert len(set(ids)) == len(ids)
