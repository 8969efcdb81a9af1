"""Rendering a task into a message and an envelope."""

from __future__ import annotations

import email
import email.policy
import random
import re
import string
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest
from aiosmtplib.email import flatten_message
from pydantic import ValidationError

from service import EmailTask
from service.task import addr_spec
from service.wire import QueuedTask
from service.worker.render import _header_line, render

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
    out = render(QueuedTask(TASK_ID, 1_700_000_000_000, task), default_sender="D <d@example.com>")
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
    out = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com")
    assert out.mail_from == "n@news.example.org"
    assert out.message["Message-ID"] == f"<{TASK_ID}@news.example.org>"
    assert out.message.get_content_type() == "text/html"


def test_same_task_renders_the_same_message() -> None:
    task = EmailTask(to="a@example.com", subject="s", text="x")
    first = render(QueuedTask(TASK_ID, 5, task), default_sender="d@example.com")
    second = render(QueuedTask(TASK_ID, 5, task), default_sender="d@example.com")
    assert first.message.as_bytes() == second.message.as_bytes()


def test_the_envelope_names_each_address_once() -> None:
    task = EmailTask(
        to=["a@example.com", "b@example.com"], cc="A <a@example.com>", bcc="b@example.com",
        subject="s", text="x",
    )  # fmt: skip
    out = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com")
    assert out.recipients == ["a@example.com", "b@example.com"]
    assert out.message["Cc"] == "A <a@example.com>"  # the headers stay as the producer wrote them
    # A retry copy written before envelopes were distinct may still name an address twice.
    retry = QueuedTask(TASK_ID, 0, task, tries=1, recipients=("b@example.com", "b@example.com"))
    assert render(retry, default_sender="d@example.com").recipients == ["b@example.com"]


# The fast path writes bytes itself; the library's rendering of the same email is the reference.
_BOUNDARY = re.compile(rb"={15}\d{19}==")
_SENDER = "D <d@example.com>"


def _by_the_library(queued: QueuedTask) -> bytes:
    """What the email library (and aiosmtplib's flattening) makes of the same email."""
    task = queued.task
    sender = task.sender or _SENDER
    domain = addr_spec(sender).rpartition("@")[2]
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(task.to)
    if task.cc:
        message["Cc"] = ", ".join(task.cc)
    if task.reply_to:
        message["Reply-To"] = ", ".join(task.reply_to)
    message["Subject"] = task.subject
    message["Date"] = format_datetime(datetime.fromtimestamp(queued.dated_ms / 1000, tz=UTC))
    message["Message-ID"] = f"<{queued.task_id}@{domain}>"
    for name, value in task.headers.items():
        message[name] = value
    if task.text is not None:
        message.set_content(task.text)
        if task.html is not None:
            message.add_alternative(task.html, subtype="html")
    elif task.html is not None:
        message.set_content(task.html, subtype="html")
    return flatten_message(message)


def _sent_bytes(queued: QueuedTask) -> tuple[bool, bytes]:
    """(whether render wrote the bytes itself, the bytes that go out)."""
    content = render(queued, default_sender=_SENDER).content
    if isinstance(content, bytes):
        return True, content
    return False, flatten_message(content)


LONG = "word " * 30
EXACT_CASES = {
    "plain text": ({"text": "Hello\nsecond line"}, True),
    "html only": ({"html": "<p>Hi</p>"}, True),
    "text and html": ({"text": "t", "html": "<p>h</p>"}, True),
    "cc, reply-to, names with specials": (
        {"to": ['"Doe, John" <j@example.com>', "b@example.com"], "cc": "c@example.com",
         "reply_to": "O'Hara <r@example.com>", "text": "x"},
        True,
    ),
    "extra headers": ({"headers": {"X-Campaign": "spring", "List-Unsubscribe": "<u@x.io>"}}, True),
    "CR, CRLF and blank lines in the body": ({"text": "a\r\nb\rc\n\n\nd\n"}, True),
    "a lone newline as body": ({"text": "\n"}, True),
    "line of exactly 78": ({"text": "x" * 78}, True),
    "spaces inside the subject": ({"subject": "  two  spaces  "}, True),
    "non-ASCII subject (RFC 2047)": ({"subject": "Grüße — ünïcode"}, True),
    "non-ASCII display name": ({"to": "Jürgen <j@example.com>"}, True),
    "long subject (folded)": ({"subject": LONG}, True),
    "long To list (folded)": ({"to": [f"Person {i} <p{i}@example.com>" for i in range(9)]}, True),
    "IDNA domain in Message-ID": ({"sender": "a@bücher.example"}, True),
    "line of 79 (quoted-printable)": ({"text": "x" * 79}, False),
    "non-ASCII body (8bit)": ({"text": "Grüße"}, False),
    "non-ASCII html beside ASCII text": ({"text": "t", "html": "<p>é</p>"}, False),
    "empty body": ({"text": ""}, False),
}  # fmt: skip


@pytest.mark.parametrize(("fields", "fast"), EXACT_CASES.values(), ids=EXACT_CASES.keys())
def test_bytes_are_the_libraries_bytes(fields: dict[str, Any], fast: bool) -> None:
    task = EmailTask(**{"to": "a@example.com", "subject": "s", "text": "x", **fields})
    queued = QueuedTask(TASK_ID, 1_700_000_000_000, task)
    written_by_render, sent = _sent_bytes(queued)
    assert written_by_render is fast
    # Only the multipart boundary is random.
    assert _BOUNDARY.sub(b"B", sent) == _BOUNDARY.sub(b"B", _by_the_library(queued))
    assert all(len(line) <= 998 for line in sent.split(b"\r\n"))
    assert sent.endswith(b"\r\n")
    assert b"\n" not in sent.replace(b"\r\n", b"")
    assert sent.isascii() or not fast


def test_non_ascii_headers_are_encoded_words_that_parse_back() -> None:
    task = EmailTask(
        to="Jürgen Groß <j@example.com>", subject="Grüße — " + "ü" * 80, text="x", html="<b>y</b>"
    )
    written_by_render, sent = _sent_bytes(QueuedTask(TASK_ID, 0, task))
    assert written_by_render
    assert sent.isascii()
    assert b"=?utf-8?" in sent
    parsed = email.message_from_bytes(sent, _class=EmailMessage, policy=email.policy.default)
    assert parsed["Subject"] == task.subject
    assert parsed["To"] == "Jürgen Groß <j@example.com>"
    assert parsed.get_body(("html",)).get_content() == "<b>y</b>\r\n"  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(5))
def test_random_plain_headers_fold_as_the_library_folds_them(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not a secret
    alphabet = string.printable[:-5] + "  é"  # printable ASCII without tab/CR/LF/VT/FF
    for _ in range(2_000):
        name = rng.choice(["Subject", "X-Tag", "Comments", "X-" + "h" * 40])
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90)))
        if "=?" in value:
            continue  # encoded words never reach render: validation refuses them
        expected = email.policy.SMTP.header_factory(name, value).fold(policy=email.policy.SMTP)
        assert _header_line(name, value) == expected, (name, value)


# Extra headers a producer may try, among them every kind the two paths once treated apart:
# the email library clears Content-* when it sets a body and parses Resent-* as addresses, and
# aiosmtplib deletes Resent-Bcc when it flattens a message.
EXTRA_HEADERS = {
    "X-Campaign": "spring",
    "List-Unsubscribe": "<mailto:u@example.com>",
    "In-Reply-To": "<a@example.com>",
    "Auto-Submitted": "auto-generated",
    "Content-Language": "en",
    "Content-Disposition": "inline",
    "Content-ID": "<part@example.com>",
    "Resent-To": "x@example.com",
    "Resent-Bcc": "x@example.com",
    "Resent-Date": "Tue, 14 Nov 2023 22:13:20 +0000",
}
BODIES = {
    "ASCII text (written by render)": {"text": "x"},
    "non-ASCII text (written by the library)": {"text": "é"},
    "text and non-ASCII html": {"text": "x", "html": "<p>é</p>"},
}


@pytest.mark.parametrize(("name", "value"), EXTRA_HEADERS.items(), ids=EXTRA_HEADERS.keys())
def test_an_extra_header_is_refused_or_sent_on_every_path(name: str, value: str) -> None:
    # One rule: validation refuses the header, or every rendering sends it as given.
    try:
        EmailTask(to="a@example.com", subject="s", text="x", headers={name: value})
    except ValidationError as refused:
        errors = refused.errors()
    else:
        errors = []
    if errors:
        assert errors[0]["loc"] == ("headers",)
        assert repr(name) in errors[0]["msg"]
        return
    for body in BODIES.values():
        task = EmailTask(to="a@example.com", subject="s", headers={name: value}, **body)
        _, sent = _sent_bytes(QueuedTask(TASK_ID, 0, task))
        parsed = email.message_from_bytes(sent, _class=EmailMessage, policy=email.policy.default)
        assert parsed.get_all(name) == [value], (name, body)


# Octets no body may carry raw: RFC 2045 allows no NUL in 7bit or 8bit data, and a text body's
# other control characters (ESC, DEL...) have no meaning there. Quoted-printable carries them all.
_RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTROL_BODIES = {
    "NUL, ESC and DEL in ASCII text": {"text": "a\x00b \x1b[31mred\x1b[0m \x7f end"},
    "ESC in html alone": {"html": "<p>\x1b</p>"},
    "form feed and vertical tab": {"text": "page one\x0cpage two\x0bx\nnext line"},
    "NUL in non-ASCII text": {"text": "Grüße\x00"},
    "a control in html beside plain text": {"text": "plain", "html": "<b>\x01</b>"},
    "a control in text beside plain html": {"text": "\x07bell", "html": "<b>x</b>"},
    "a long line with a control": {"text": "\x00" + "x" * 200},
}


@pytest.mark.parametrize("fields", CONTROL_BODIES.values(), ids=CONTROL_BODIES.keys())
def test_control_characters_in_bodies_are_sent_quoted_printable(fields: dict[str, str]) -> None:
    task = EmailTask(to="a@example.com", subject="s", **fields)
    _, sent = _sent_bytes(QueuedTask(TASK_ID, 0, task))
    assert _RAW_CONTROL.search(sent) is None
    parsed = email.message_from_bytes(sent, _class=EmailMessage, policy=email.policy.default)
    for subtype, body in (("plain", task.text), ("html", task.html)):
        if body is None:
            continue
        part = parsed.get_body((subtype,))
        assert part is not None
        if _RAW_CONTROL.search(body.encode()):
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content().replace("\r\n", "\n") == body + "\n"  # exactly as written
