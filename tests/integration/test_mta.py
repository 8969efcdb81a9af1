"""The renderer's equivalence, through a real MTA: the worker (a real subprocess) sends a sample
of emails to a private Postfix, which delivers them to a Maildir; each delivered copy is read
back with the standard library's parser and must carry exactly what was enqueued (the property
test's check, tests/emails.py), reach exactly its envelope recipients, and be, below the trace
headers Postfix adds, the very bytes the renderer wrote: anything Postfix had to change (a long
line, 8-bit data on a 7-bit path, a header it rewrites) fails here. Twice: on a listener that
offers 8BITMIME and SMTPUTF8, and on one that offers neither.

Postfix needs root and Debian's package: without them these tests are skipped with the reason
in pytest's summary, unless TESTS_REQUIRE_POSTFIX=1 (`.ci/run` sets it) makes that a failure.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import os
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from service import Attachment, EmailTask
from service.local.redis_server import RedisServer
from service.wire import QueuedTask
from service.worker.render import render
from tests.conftest import _SETTING_PREFIXES, DEAD, WorkerProcess, enqueue
from tests.emails import check_read_back, tasks
from tests.mta import Delivery, Postfix, postfix_missing, start_postfix

_MISSING = postfix_missing()
_REQUIRED = os.environ.get("TESTS_REQUIRE_POSTFIX") == "1"
pytestmark = pytest.mark.skipif(_MISSING is not None and not _REQUIRED, reason=str(_MISSING))

MAIL_FROM = "Sender Ünïcode <sender@example.com>"
PIXEL = bytes(range(256)) * 12
SAMPLE = [
    EmailTask(to="someone@example.com", subject="Plain", text="One line of ASCII.\n"),
    EmailTask(
        to=["Ann <ann@example.com>", "bob@example.com"],
        cc="Carol <carol@example.com>",
        bcc="dave@example.com",
        reply_to="Support Desk <support@example.com>",
        subject="HTML and text, several recipients",
        text="Hello,\n\nthe text part.\n",
        html="<p>Hello,</p><p>the <b>HTML</b> part.</p>",
        headers={"X-Campaign-Name": "winter-2026", "List-Unsubscribe": "<mailto:u@example.com>"},
    ),
    EmailTask(
        to="Zoë Çelik-Müller <zoe@example.com>",
        cc="Дмитрий Иванов <dmitry@example.com>",
        subject="Grüße aus Köln — 東京 и Москва 🎉",
        text="Grüße, Zoë!\nПривет, Дмитрий.\n日本語の本文です。\n",  # noqa: RUF001 (Cyrillic on purpose)
        html="<p>Grüße — <i>Привет</i> — 日本語 🎉</p>",
    ),
    EmailTask(
        to="long@example.com",
        subject="x" * 300 + " and a long subject " + "ü" * 200,
        text="a" * 5000 + "\n" + "é" * 3000 + "\n" + "word " * 800 + "\n",
        html="<p>" + "<span>ß</span>" * 700 + "</p>",
    ),
    EmailTask(
        to="limit@example.com",
        subject="Lines at RFC 5322's 998 octets, and one past",
        # 998 octets may go as they are (7bit, or 8bit in UTF-8); 999 must be encoded.
        text="y" * 998 + "\n" + "y" * 999 + "\n" + "é" * 499 + "\n" + "é" * 499 + "y\n",
        html="<p>" + "z" * 991 + "</p>",
    ),
    EmailTask(
        to="files@example.com",
        subject="Attachments named outside ASCII",
        text="Two files.\n",
        attachments=[
            Attachment(
                filename="Rechnung März 2026 — Übersicht.pdf",
                content=b"%PDF-1.4\n" + bytes(reversed(range(256))) * 40,
                content_type="application/pdf",
            ),
            Attachment(
                filename="日本語のファイル名とても長い名前" * 6 + ".txt",
                content="テキスト\r\n".encode() * 50,
                content_type="text/plain",
            ),
            Attachment(filename="empty.bin", content=b"", content_type="application/octet-stream"),
        ],
    ),
    EmailTask(
        to="Ina Lindström <ina@example.com>",
        subject="Inline image",
        text="See the picture.\n",
        html='<p>Logo:</p><img src="cid:logo.1@shop.example">',
        attachments=[
            Attachment(
                filename="logo.png",
                content=PIXEL,
                content_type="image/png",
                content_id="logo.1@shop.example",
            ),
            Attachment(filename="Prix été № 5.csv", content=b"a;b\n1;2\n", content_type="text/csv"),
        ],
    ),
    EmailTask(
        to="edges@example.com",
        sender="Shop Größe <shop@example.com>",
        subject="Dots, From lines, control characters, bare CR and LF",
        text=".\n..\n.leading dot\nFrom the start of a line\r\nbare\rCR\x00NUL\x1bESC\ttab\n\n\n",
        html=".<p>dot first</p>\r\n.\r\n",
    ),
]


class RoundTrip:
    """A worker sending to one Postfix listener; `send` enqueues and returns what was delivered."""

    def __init__(self, postfix: Postfix, redis_url: str, port: int, workdir: Path) -> None:
        self.postfix = postfix
        self.redis_url = redis_url
        self.eightbit = port == postfix.port
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
        env.update(
            REDIS_URL=redis_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(port),
            SMTP_SECURITY="none",
            MAIL_FROM=MAIL_FROM,
            WORKER_CONCURRENCY="4",
            LOG_FORMAT="json",
        )
        self.worker = WorkerProcess(env, workdir)
        self.worker.wait_for_log("worker_started")

    def send(self, batch: list[EmailTask]) -> dict[str, list[Delivery]]:
        """Enqueue `batch`; wait until Postfix delivered a copy to each envelope recipient."""
        ids = enqueue(self.redis_url, batch)
        wanted = {
            f"<{task_id}@example.com>": len(_envelope_recipients(task))
            for task_id, task in zip(ids, batch, strict=True)
        }
        deadline = time.monotonic() + 30
        while True:
            found: dict[str, list[Delivery]] = {}
            for delivery in self.postfix.deliveries():
                if delivery.message_id in wanted:
                    found.setdefault(delivery.message_id, []).append(delivery)
            if all(len(found.get(key, ())) >= count for key, count in wanted.items()):
                break
            if time.monotonic() > deadline or self.worker.process.poll() is not None:
                raise AssertionError(
                    f"delivered {sum(map(len, found.values()))} of {sum(wanted.values())}\n"
                    f"worker: {self.worker.output()[-3000:]}\npostfix: {self.postfix.log[-3000:]}"
                )
            time.sleep(0.05)
        assert self.postfix.problems() == []
        return {task_id: found[f"<{task_id}@example.com>"] for task_id in ids}

    def check(self, task_id: str, task: EmailTask, copies: list[Delivery]) -> None:
        """Each copy: the enqueued email, read back; exactly the renderer's bytes below the
        trace headers; one copy per envelope recipient."""
        assert sorted(c.recipient.lower() for c in copies) == sorted(
            a.lower() for a in _envelope_recipients(task)
        )
        for copy in copies:
            sent = copy.without_trace()
            check_read_back(
                task, sent, message_id=f"<{task_id}@example.com>", default_sender=MAIL_FROM,
                eightbit=self.eightbit,
            )  # fmt: skip
            # The Date line is the second the task was enqueued: render it the same way.
            dated = email.utils.parsedate_to_datetime(_header(sent, b"Date"))
            out = render(
                QueuedTask(task_id, int(dated.timestamp()) * 1000, task),
                default_sender=MAIL_FROM,
            )
            assert copy.sender == out.mail_from
            assert _same_boundaries(sent) == _same_boundaries(out.data(eightbit=self.eightbit))


def _envelope_recipients(task: EmailTask) -> set[str]:
    mailboxes = [*task.to, *task.cc, *task.bcc]
    parsed = [email.policy.default.header_factory("to", m).addresses[0] for m in mailboxes]
    return {a.addr_spec for a in parsed}


def _header(data: bytes, name: bytes) -> str:
    found = re.search(rb"^" + name + rb": (.*)\r\n", data, re.MULTILINE | re.IGNORECASE)
    assert found is not None, name
    return found.group(1).decode("ascii")


def _same_boundaries(data: bytes) -> bytes:
    """The renderer draws each email's MIME boundary at random: one placeholder for all."""
    return re.sub(rb"=_[0-9a-f]{16}_", b"=_BOUNDARY_", data)


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    with start_postfix() as instance:  # raises, naming what is missing, when Postfix cannot run
        yield instance


@pytest.fixture(scope="module")
def mta_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("mta-redis"))
    server.start()
    yield server
    server.stop()


def _database(server: RedisServer, index: int) -> str:
    """A database of its own for each worker here: none takes another's tasks."""
    return f"redis://127.0.0.1:{server.port}/{index}"


LISTENERS = ["8BITMIME+SMTPUTF8", "7-bit"]


@pytest.fixture(scope="module", params=LISTENERS)
def round_trip(
    request: pytest.FixtureRequest,
    postfix: Postfix,
    mta_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RoundTrip]:
    url = _database(mta_redis, 1 + LISTENERS.index(request.param))
    port = postfix.port if request.param == "8BITMIME+SMTPUTF8" else postfix.seven_bit_port
    trip = RoundTrip(postfix, url, port, tmp_path_factory.mktemp("mta-worker"))
    yield trip
    assert trip.worker.stop() == 0
    with redis_sync.Redis.from_url(url) as db:
        assert db.xlen(DEAD) == 0, "nothing dead-lettered"


def test_the_listeners_offer_what_their_names_say(postfix: Postfix) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.port) as client:
        client.ehlo()
        assert client.has_extn("8bitmime")
        assert client.has_extn("smtputf8")
    with smtplib.SMTP("127.0.0.1", postfix.seven_bit_port) as client:
        client.ehlo()
        assert not client.has_extn("8bitmime")
        assert not client.has_extn("smtputf8")


def test_a_sample_arrives_as_enqueued(round_trip: RoundTrip) -> None:
    delivered = round_trip.send(SAMPLE)
    for (task_id, copies), task in zip(delivered.items(), SAMPLE, strict=True):
        round_trip.check(task_id, task, copies)


# Three batches of ten generated tasks per listener, from a fixed seed (derandomize); no
# shrinking: each step would be another round trip, and the failing batch is printed as drawn.
@settings(
    max_examples=3,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(tasks(), min_size=10, max_size=10))
def test_generated_tasks_arrive_as_enqueued(round_trip: RoundTrip, batch: list[EmailTask]) -> None:
    delivered = round_trip.send(batch)
    for (task_id, copies), task in zip(delivered.items(), batch, strict=True):
        round_trip.check(task_id, task, copies)
