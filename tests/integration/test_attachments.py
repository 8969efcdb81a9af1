"""Attachments and every kind of body end to end: a producer enqueues, the worker (a real
subprocess) renders and sends, and a real SMTP server receives exactly what was enqueued, with
8BITMIME offered and without it."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_sync

from service import Attachment, EmailTask, EmailTooLarge, Producer
from service.local.redis_server import RedisServer
from tests.conftest import STREAM, enqueue, wait_until
from tests.integration.test_worker import StartWorker
from tests.smtp_server import SmtpServer

LOGO = bytes(range(256)) * 40
INVOICE = b"%PDF-1.4\n" + bytes(reversed(range(256))) * 7
TASKS = [
    EmailTask(
        to="Zoë Çelik <zoe@example.com>",
        subject="Ihre Rechnung — März",
        text="Grüße,\nanbei die Rechnung.\n",
        html='<p>Hallo</p><img src="cid:logo@shop.example">' + "<span>x</span>" * 100,
        attachments=[
            Attachment(
                filename="Rechnung März.pdf", content=INVOICE, content_type="application/pdf"
            ),
            Attachment(
                filename="logo.png",
                content=LOGO,
                content_type="image/png",
                content_id="logo@shop.example",
            ),
        ],
    ),
    EmailTask(to="a@example.com", subject="Привет", text="Как дела?\n" * 20),
    EmailTask(to="b@example.com", subject="plain", text="a\x00b\r\nline\rend"),
]


def _leaves(task: EmailTask) -> list[tuple[str, object]]:
    bodies = [("text/plain", task.text), ("text/html", task.html)]
    leaves: list[tuple[str, object]] = [
        (kind, body.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n") + "\n")
        for kind, body in bodies
        if body is not None
    ]
    # Inline files sit beside the HTML (multipart/related), the others after the bodies.
    inline_first = sorted(task.attachments, key=lambda a: a.content_id is None)
    leaves += [(a.content_type, (a.filename, a.content)) for a in inline_first]
    return leaves


@pytest.mark.parametrize("eightbitmime", [True, False], ids=["8BITMIME", "7-bit"])
def test_the_server_receives_every_part_as_enqueued(
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    start_worker: StartWorker,
    eightbitmime: bool,
) -> None:
    smtp.behaviour.eight_bit_mime = eightbitmime
    task_ids = enqueue(redis_server.url, TASKS)
    worker = start_worker()
    wait_until(lambda: len(smtp.received) == len(TASKS), 30, "the deliveries")
    assert worker.stop() == 0
    by_id = dict(zip(task_ids, TASKS, strict=True))
    for received in smtp.received:
        task = by_id[str(received.message["Message-ID"]).strip("<>").split("@")[0]]
        assert str(received.message["Subject"]) == task.subject
        assert ("BODY=8BITMIME" in received.mail_options) is eightbitmime
        if not eightbitmime:
            assert received.content.isascii()
        leaves: list[tuple[str, object]] = []
        for part in received.message.walk():
            if part.is_multipart():
                continue
            if part.get_filename() is None:
                content = part.get_content().replace("\r\n", "\n")
                leaves.append((part.get_content_type(), content))
            else:
                data = part.get_payload(decode=True)
                leaves.append((part.get_content_type(), (part.get_filename(), data)))
        assert leaves == _leaves(task)
    assert any(not r.content.isascii() for r in smtp.received) is eightbitmime


def test_an_email_past_the_budget_is_refused_naming_the_field(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    big = EmailTask(
        to="a@example.com",
        subject="s",
        text="t",
        attachments=[Attachment(filename="big.bin", content=b"x" * 7_600)],
    )

    async def run() -> None:
        async with Producer.from_url(redis_server.url, max_email_bytes=10_000) as producer:
            # 7,600 bytes are 10,134 as base64 lines: past the budget although the file is not.
            with pytest.raises(EmailTooLarge) as caught:
                await producer.enqueue_many([TASKS[1], big])
            assert (caught.value.field, caught.value.limit) == ("attachments", 10_000)
            assert caught.value.size > 10_000
            assert not caught.value.maybe_enqueued
            assert "attachments: " in str(caught.value)
            small = big.model_copy(update={"attachments": [big.attachments[0].model_copy(
                update={"content": b"x" * 7_000})]})  # fmt: skip
            await producer.enqueue(small)

    asyncio.run(run())
    assert db.xlen(STREAM) == 1  # the refused batch enqueued nothing
