"""Rendering a task into a message and an envelope."""

from __future__ import annotations

from service import EmailTask
from service.wire import Envelope
from service.worker.render import render

TASK_ID = "0123456789abcdef0123456789abcdef"


def test_headers_bodies_and_envelope() -> None:
    task = EmailTask(
        to=["A <a@example.com>", "b@example.com"],
        cc="c@example.com",
        bcc="hidden@example.com",
        reply_to="r@example.com",
        subject="Héllo",
        text="plain",
        html="<p>html</p>",
        headers={"X-Campaign": "spring"},
    )
    out = render(Envelope(TASK_ID, 1_700_000_000_000, task), default_sender="D <d@example.com>")
    message = out.message
    assert message["From"] == "D <d@example.com>"
    assert message["To"] == "A <a@example.com>, b@example.com"
    assert message["Cc"] == "c@example.com"
    assert message["Bcc"] is None
    assert "hidden@example.com" not in message.as_string()
    assert message["Reply-To"] == "r@example.com"
    assert message["Subject"] == "Héllo"
    assert message["X-Campaign"] == "spring"
    assert message["Message-ID"] == f"<{TASK_ID}@example.com>"
    assert message["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert message.get_body(("plain",)).get_content() == "plain\n"  # type: ignore[union-attr]
    assert message.get_body(("html",)).get_content() == "<p>html</p>\n"  # type: ignore[union-attr]
    assert out.mail_from == "d@example.com"
    assert out.recipients == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "hidden@example.com",
    ]


def test_task_sender_overrides_default_and_names_message_id_domain() -> None:
    task = EmailTask(
        to="a@example.com", sender="N <n@news.example.org>", subject="s", html="<b>x</b>"
    )
    out = render(Envelope(TASK_ID, 0, task), default_sender="d@example.com")
    assert out.mail_from == "n@news.example.org"
    assert out.message["Message-ID"] == f"<{TASK_ID}@news.example.org>"
    assert out.message.get_content_type() == "text/html"


def test_same_task_renders_the_same_message() -> None:
    task = EmailTask(to="a@example.com", subject="s", text="x")
    first = render(Envelope(TASK_ID, 5, task), default_sender="d@example.com")
    second = render(Envelope(TASK_ID, 5, task), default_sender="d@example.com")
    assert first.message.as_bytes() == second.message.as_bytes()
