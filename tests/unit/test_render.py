"""Rendering a task into a message and an envelope."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from email.message import EmailMessage
from typing import Any

import pytest
from pydantic import ValidationError

from service import EmailTask
from service.task import Attachment
from service.wire import QueuedTask
from service.worker.render import Outgoing, _base64_lines, _has_control, _plain_pieces, render
from service.worker.transaction import dot_stuffed

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
    assert first.data(eightbit=True) == second.data(eightbit=True)


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


def _parsed(data: bytes) -> EmailMessage:
    text = data.replace(b"\r\n", b"\n")
    return email.message_from_bytes(text, _class=EmailMessage, policy=email.policy.default)


def _encodings(data: bytes) -> list[str]:
    return [str(part["Content-Transfer-Encoding"]) for part in _parsed(data).walk()
            if not part.is_multipart()]  # fmt: skip


# The cheapest valid transfer encoding per body, with and without the server's 8BITMIME.
ENCODINGS = {
    "ASCII text": ({"text": "Hello\nsecond line"}, ["7bit"], ["7bit"]),
    "an HTML line of 998 octets": ({"text": "x" * 998}, ["7bit"], ["7bit"]),
    "an HTML line of 999 octets": ({"text": "x" * 999}, ["quoted-printable"], None),
    "a few accents": (
        {"text": "Viele Grüße aus dem schönen Köln, bis bald!"}, ["8bit"], ["quoted-printable"]
    ),
    "many accents": ({"text": "Grüße aus Köln, " * 5}, ["8bit"], ["base64"]),
    "mostly non-ASCII": ({"text": "Привет, как дела?"}, ["8bit"], ["base64"]),
    "a control character": ({"text": "a\x1bb"}, ["quoted-printable"], None),
    "ASCII text beside non-ASCII html": (
        {"text": "t", "html": "<p>Café</p>" * 10}, ["7bit", "8bit"], ["7bit", "quoted-printable"]
    ),
    "an attachment": (
        {"attachments": [Attachment(filename="a.bin", content=b"\x00\xff")]},
        ["7bit", "base64"],
        None,
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "eightbit", "sevenbit"), ENCODINGS.values(), ids=ENCODINGS.keys()
)
def test_bodies_go_in_the_cheapest_valid_encoding(
    fields: dict[str, Any], eightbit: list[str], sevenbit: list[str] | None
) -> None:
    task = EmailTask(**{"to": "a@example.com", "subject": "s", "text": "x", **fields})
    out = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com")
    assert _encodings(out.data(eightbit=True)) == eightbit
    assert _encodings(out.data(eightbit=False)) == (sevenbit or eightbit)
    assert out.data(eightbit=False).isascii()
    assert not out.smtputf8


def test_non_ascii_headers_are_encoded_words_that_parse_back() -> None:
    task = EmailTask(
        to="Jürgen Groß <j@example.com>", subject="Grüße — " + "ü" * 80, text="x", html="<b>y</b>"
    )
    sent = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com").data(eightbit=True)
    assert sent.isascii()
    assert b"=?utf-8?" in sent
    parsed = _parsed(sent)
    assert parsed["Subject"] == task.subject
    assert parsed["To"] == "Jürgen Groß <j@example.com>"
    assert parsed.get_body(("html",)).get_content() == "<b>y</b>\n"  # type: ignore[union-attr]
    assert all(len(line) <= 78 for line in sent.split(b"\r\n"))


def test_attachments_regular_and_inline() -> None:
    logo = Attachment(filename="logo.png", content=b"\x89PNG\r\n", content_type="image/png",
                      content_id="logo@shop")  # fmt: skip
    invoice = Attachment(filename="Rechnung März.pdf", content=bytes(range(256)) * 3,
                         content_type="application/pdf")  # fmt: skip
    task = EmailTask(to="a@example.com", subject="s", text="t", html='<img src="cid:logo@shop">',
                     attachments=[invoice, logo])  # fmt: skip
    message = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com").message
    shape = [part.get_content_type() for part in message.walk()]
    assert shape == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    parts = list(message.walk())
    assert parts[5]["Content-ID"] == "<logo@shop>"
    assert parts[5].get_content_disposition() == "inline"
    assert parts[6].get_filename() == "Rechnung März.pdf"
    assert parts[6].get_content_disposition() == "attachment"
    assert parts[6].get_content() == invoice.content
    assert parts[5].get_content() == logo.content


def test_a_long_non_ascii_filename_is_split_into_rfc_2231_continuations() -> None:
    name = "Übersicht " * 25 + ".pdf"
    task = EmailTask(to="a@example.com", subject="s", text="t",
                     attachments=[Attachment(filename=name, content=b"x")])  # fmt: skip
    sent = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com").data(eightbit=True)
    assert b"filename*3*=" in sent
    assert all(len(line) <= 78 for line in sent.split(b"\r\n"))
    assert [p.get_filename() for p in _parsed(sent).iter_attachments()] == [name]


def test_a_sender_that_is_not_ascii_needs_smtputf8() -> None:
    task = EmailTask(to="a@example.com", subject="s", text="t")
    out = render(QueuedTask(TASK_ID, 0, task), default_sender="Zoë <zoë@example.com>")
    assert out.smtputf8
    assert out.mail_from == "zoë@example.com"
    assert out.message["From"].addresses[0].username == "zoë"


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
    "ASCII text": {"text": "x"},
    "non-ASCII text": {"text": "é"},
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
        out = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com")
        for eightbit in (True, False):
            parsed = _parsed(out.data(eightbit=eightbit))
            assert parsed.get_all(name) == [value], (name, body)


# Octets no body may carry raw: RFC 2045 allows no NUL in 7bit or 8bit data, and a text body's
# other control characters (ESC, DEL...) have no meaning there. Quoted-printable and base64
# carry them all.
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


@pytest.mark.parametrize("octet", range(256))
def test_a_control_is_found_wherever_it_is(octet: int) -> None:
    control = _RAW_CONTROL.fullmatch(bytes([octet])) is not None
    text = "Grüße\r\n".encode() * 25
    inside = bytes([octet])
    for data in (inside, b"<p>" + inside + b"</p>\r\n", text + inside + text):
        assert _has_control(data) is control, (octet, data[:20])
    assert _has_control(text) is False


@pytest.mark.parametrize("fields", CONTROL_BODIES.values(), ids=CONTROL_BODIES.keys())
@pytest.mark.parametrize("eightbit", [True, False])
def test_control_characters_in_bodies_are_sent_encoded(
    fields: dict[str, str], eightbit: bool
) -> None:
    task = EmailTask(to="a@example.com", subject="s", **fields)
    out = render(QueuedTask(TASK_ID, 0, task), default_sender="d@example.com")
    sent = out.data(eightbit=eightbit)
    assert _RAW_CONTROL.search(sent) is None
    parsed = _parsed(sent)
    for subtype, body in (("plain", task.text), ("html", task.html)):
        if body is None:
            continue
        part = parsed.get_body((subtype,))
        assert part is not None
        if _RAW_CONTROL.search(body.encode()):
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        assert part.get_content().replace("\r\n", "\n") == body + "\n"  # exactly as written


_PDF = bytes(range(256)) * 80  # 20 KB: its base64 lines are most of the message


@pytest.mark.parametrize(
    ("changes", "plain"),
    [
        ({}, True),
        (
            {
                "html": "<p>Hello.</p>\n<p>.</p>",
                "attachments": [{"filename": "a.pdf", "content": _PDF}],
            },
            True,
        ),
        ({"text": "Grüße.\n"}, True),  # 8bit, or quoted-printable in the 7-bit form
        ({"text": "first\n.hidden\n"}, False),  # a line starting with a dot: stuffed
        ({"text": ".\n"}, False),
        # Mostly ASCII in UTF-8: 8bit, or quoted-printable (which keeps a leading dot).
        ({"text": "Grüße from the whole team\n.x\n"}, False),
        ({"text": ".Grüße from the whole team\n"}, False),
        ({"text": "Grüße\n", "html": "<p>\n.x</p>"}, False),
        ({"text": "x\r\n.y\rz\r"}, False),  # CR and CRLF line ends, written as CRLF
        ({"text": "x\r\ny\rz\r"}, True),
        ({"headers": {".X": "v"}}, False),  # a header line starting with a dot
        ({"html": "<p>\n.x</p>", "attachments": [{"filename": "a.pdf", "content": _PDF}]}, False),
    ],
)
def test_the_renderer_says_whether_its_lines_need_dot_stuffing(
    changes: dict[str, Any], plain: bool
) -> None:
    task = EmailTask(**{"to": "a@example.com", "subject": "s", "text": "Hello.\n", **changes})
    out = render(QueuedTask(TASK_ID, 1_700_000_000_000, task), default_sender="d@example.com")
    for eightbit in (True, False):
        data = out.data(eightbit=eightbit)
        assert out.plain_lines(eightbit=eightbit) is plain
        assert (dot_stuffed(data) == data + b".\r\n") is plain


def _plain_piece(piece: bytes) -> bool:
    lines = piece.split(b"\r\n")
    return (
        lines[-1] == b""
        and not any(b"\r" in line or b"\n" in line for line in lines)
        and not any(line.startswith(b".") for line in lines)
    )


PIECES = {
    "none": [],
    "one line": [b"a\r\n"],
    "lines in pieces": [b"a\r\nb\r\n", b"\r\n", b"--b\r\n"],
    "a CRLF split between pieces": [b"a\r", b"\nb\r\n"],
    "a piece not ending a line": [b"a\r\n", b"b"],
    "a piece starting with a dot": [b"a\r\n", b".b\r\n"],
    "the first piece starting with a dot": [b".a\r\n"],
    "a line inside a piece starting with a dot": [b"a\r\n.b\r\n"],
    "a bare LF": [b"a\nb\r\n"],
    "a bare CR": [b"a\rb\r\n"],
    "an empty piece": [b"a\r\n", b""],
    "a dot not starting a line": [b"a.b\r\n", b"x.\r\n"],
    "a NUL in a piece": [b"a\r\n\0b"],
    "a NUL in a piece that is plain": [b"a\0b\r\n"],
}


@pytest.mark.parametrize("pieces", PIECES.values(), ids=PIECES.keys())
def test_pieces_are_plain_when_each_is(pieces: list[bytes]) -> None:
    expected = all(_plain_piece(piece) for piece in pieces)
    if any(b"\0" in piece for piece in pieces):
        expected = False  # a NUL of a piece's own makes the answer False, which says nothing
    assert _plain_pieces(pieces) is expected


@pytest.mark.parametrize(
    ("data", "plain"), [(b"", False), (b"a\r\n", True), (b"a", False), (b".a\r\n", False)]
)
def test_a_prebuilt_message_is_plain_only_with_whole_lines(data: bytes, plain: bool) -> None:
    out = Outgoing.prebuilt(data, "a@example.com", ["b@example.com"])
    assert out.plain_lines(eightbit=True) is plain
    assert (dot_stuffed(data) == data + b".\r\n") is plain  # an empty message gets a CRLF


# Around the lengths where the lines are cut (57 bytes a line) and padded (0, 1 or 2 bytes),
# and long enough for the encoder's vectorized loops.
BASE64_LENGTHS = [1, 2, 3, 56, 57, 58, 114, 3_647, 3_648, 3_649, 3_648 * 2 + 57, 20_489, 100_000]


@pytest.mark.parametrize("length", BASE64_LENGTHS)
def test_base64_bodies_are_the_standard_encoding_in_lines_of_76(length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    expected = base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76 characters a line
    assert _base64_lines(data) == expected
    assert _base64_lines(b"") == b""
