"""A delivery waiting for its slot: it sends when the slot comes, and gives up at once when
the worker is asked to stop (the store is never called: no Redis is needed)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from service import EmailTask
from service.keys import QueueKeys
from service.settings import WorkerSettings
from service.store import Entry, QueueStore
from service.wire import encode_entry, retry_entry
from service.worker.domains import DomainLines
from service.worker.metrics import WorkerMetrics
from service.worker.pacing import Admission, Pacer, entry_cost


def _pacer(stopping: asyncio.Event, **settings: str) -> Pacer:
    worker_settings = WorkerSettings.model_validate(
        {"mail_from": "s@example.com", "smtp_rate_limit": "10/s", **settings}
    )
    store = QueueStore(Redis(), QueueKeys("emails"))  # never connects: nothing here asks it
    return Pacer(worker_settings, store, WorkerMetrics("emails"), stopping=stopping)


@pytest.mark.parametrize(
    ("delay_s", "stop_after_s", "sends", "waited_s"),
    [
        (0.0, None, True, 0.0),  # its slot has come
        (0.2, None, True, 0.2),  # waits for it
        (5.0, 0.1, False, 0.1),  # a stop ends the wait at once
        (0.0, 0.0, False, 0.0),  # stopping already: nothing more is sent
    ],
)
async def test_wait_turn(
    delay_s: float, stop_after_s: float | None, sends: bool, waited_s: float
) -> None:
    stopping = asyncio.Event()
    pacer = _pacer(stopping)
    if stop_after_s == 0.0:
        stopping.set()
    elif stop_after_s is not None:
        asyncio.get_running_loop().call_later(stop_after_s, stopping.set)
    started = time.monotonic()
    assert await pacer.wait_turn(Admission(started + delay_s)) is sends
    elapsed = time.monotonic() - started
    # Not early; and a stop does not wait out the 5 s (loose: the machine may be loaded).
    assert waited_s - 0.01 <= elapsed < waited_s + 1.0


async def test_without_limits_the_pacer_reads_what_is_free_and_admits_all() -> None:
    pacer = _pacer(asyncio.Event(), smtp_rate_limit="")
    assert not pacer.active
    assert await pacer.wait_to_read(7) == 7
    assert await pacer.admit([]) == []


def _entry(task: EmailTask, recipients: list[str] | None = None) -> Entry:
    fields = {k.encode(): v for k, v in encode_entry(task, "0" * 32, 1).items()}
    if recipients is not None:  # a retry copy narrowed to these
        fields = retry_entry(fields, tries=1, recipients=recipients, error="x")
    return Entry("1-0", fields, 1)


@pytest.mark.parametrize(
    ("entry", "per_recipient", "cost"),
    [
        (_entry(EmailTask(to=["a@x.example", "b@x.example"], subject="s", text="t")), False, 1),
        (_entry(EmailTask(to=["a@x.example", "b@x.example"], subject="s", text="t")), True, 2),
        (
            _entry(
                EmailTask(
                    to="a@x.example", cc="b@x.example", bcc="c@x.example", subject="s", text="t"
                )
            ),
            True,
            3,
        ),
        (_entry(EmailTask(to=["a@x.example", "a@x.example"], subject="s", text="t")), True, 1),
        (
            _entry(
                EmailTask(to=["a@x.example", "b@x.example"], subject="s", text="t"), ["b@x.example"]
            ),
            True,
            1,
        ),
        (Entry("1-0", {b"v": b"99"}, 1), True, 0),  # undecodable: never sent
        (Entry("1-0", {b"v": b"99"}, 1), False, 1),
    ],
)
def test_entry_cost(entry: Entry, per_recipient: bool, cost: int) -> None:
    assert entry_cost(entry, per_recipient=per_recipient) == cost


@pytest.mark.parametrize(
    ("entry", "domains"),
    [
        (_entry(EmailTask(to="a@gmail.com", subject="s", text="t")), ("gmail.com",)),
        (_entry(EmailTask(to="a@GMail.COM", subject="s", text="t")), ("gmail.com",)),
        # Exact domains: a subdomain or a look-alike is not limited.
        (_entry(EmailTask(to="a@mail.gmail.com", subject="s", text="t")), ()),
        (_entry(EmailTask(to="a@googlemail.com", subject="s", text="t")), ()),
        # Every envelope recipient counts (cc and bcc too), each domain once, in the
        # configuration's order.
        (
            _entry(
                EmailTask(
                    to="a@yahoo.com", cc=["b@gmail.com"], bcc=["c@gmail.com"], subject="s", text="t"
                )
            ),
            ("gmail.com", "yahoo.com"),
        ),
        # A retry copy narrowed to some recipients: only theirs.
        (
            _entry(
                EmailTask(to=["a@gmail.com", "b@yahoo.com"], subject="s", text="t"), ["b@yahoo.com"]
            ),
            ("yahoo.com",),
        ),
        (Entry("1-0", {b"v": b"99"}, 1), ()),  # undecodable: never sent
    ],
)
def test_limited_domains(entry: Entry, domains: tuple[str, ...]) -> None:
    settings = WorkerSettings.model_validate(
        {"mail_from": "s@example.com", "smtp_domain_limits": "gmail.com=1/s,yahoo.com=2/s"}
    )
    lines = DomainLines(
        settings, QueueStore(Redis(), QueueKeys("emails")), WorkerMetrics("e"), horizon_s=0.1
    )
    assert lines.limited(entry)[1] == domains
