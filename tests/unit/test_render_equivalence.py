"""The renderer proven by equivalence: for generated tasks, the standard library's parser
(policy=default) reads back exactly the headers, addresses, parts, bodies and attachment bytes
that were enqueued, from the 8-bit and the 7-bit form alike, and every line is within RFC 5322's
998 octets."""

from __future__ import annotations

import email.policy

from hypothesis import HealthCheck, given, settings

from service import EmailTask
from service.wire import QueuedTask
from service.worker.render import _name_and_address, render
from service.worker.transaction import dot_stuffed
from tests.emails import check_read_back, mailbox, tasks

TASK_ID = "0123456789abcdef0123456789abcdef"
SENDER = "Worker <worker@example.com>"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks())
def test_the_parser_reads_back_what_was_enqueued(task: EmailTask) -> None:
    out = render(QueuedTask(TASK_ID, 1_700_000_000_000, task), default_sender=SENDER)
    assert not out.smtputf8
    for eightbit in (True, False):
        data = out.data(eightbit=eightbit)
        check_read_back(
            task, data, message_id=f"<{TASK_ID}@example.com>",
            default_sender=SENDER, eightbit=eightbit,
        )  # fmt: skip
        if out.plain_lines(eightbit=eightbit):  # what DATA carries unscanned needs no stuffing
            assert dot_stuffed(data) == data + b".\r\n"


@settings(max_examples=500, deadline=None)
@given(mailbox)
def test_a_mailbox_is_read_as_the_standard_library_reads_it(value: str) -> None:
    normalized = EmailTask(to=value, subject="s", text="t").to[0]
    parsed = email.policy.default.header_factory("to", normalized).addresses[0]
    assert _name_and_address(normalized) == (parsed.display_name, parsed.addr_spec)
