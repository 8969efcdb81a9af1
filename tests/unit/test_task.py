"""EmailTask validation, as a table: each bad input fails naming its field."""

from __future__ import annotations

from email.headerregistry import HeaderRegistry
from typing import Any

import pytest
from pydantic import ValidationError

from service import EmailTask
from service.task import MAX_BODY_CHARS, MAX_RECIPIENTS, distinct_addresses

BASE: dict[str, Any] = {"to": "a@example.com", "subject": "Hi", "text": "Hello"}


@pytest.mark.parametrize(
    ("changes", "location", "message"),
    [
        ({"to": "not-an-address"}, "to.0", "not a single email address"),
        ({"to": "a@example.com, b@example.com"}, "to.0", "not a single email address"),
        ({"to": "a@localhost"}, "to.0", "not a valid email address"),
        ({"to": "jörg@example.com"}, "to.0", "not a single email address"),
        ({"to": []}, "to", "at least 1 item"),
        ({"to": "Evil\r\nBcc: x@example.com <a@example.com>"}, "to.0", "control character"),
        ({"cc": ["ok@example.com", "bad@"]}, "cc.1", "not a single email address"),
        ({"bcc": "x@@example.com"}, "bcc.0", "not a single email address"),
        ({"reply_to": "nope"}, "reply_to.0", "not a single email address"),
        ({"sender": "Name\n <s@example.com>"}, "sender", "control character"),
        ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject", "control character"),
        ({"subject": "Hi\x00"}, "subject", "control character"),
        ({"subject": "Hi\u2028there"}, "subject", "control character"),
        ({"subject": "=?utf-8?q?hi=0D=0AReply-To=3A_x=40evil=2Ecom?="}, "subject", "'=?'"),
        ({"headers": {"X-Tag": "=?utf-8?q?a=0D=0Ab?="}}, "headers.X-Tag", "'=?'"),
        ({"to": "=?utf-8?q?a=0D=0Ab?= <a@example.com>"}, "to.0", "not a single email"),
        ({"to": "=?utf-8?q?a=00b?= <a@example.com>"}, "to.0", "not a single email"),
        ({"to": '"x=?y" <a@example.com>'}, "to.0", "'=?'"),
        ({"subject": "x" * 999}, "subject", "at most 998 characters"),
        ({"text": None}, "", "text or html is required"),
        ({"text": "x" * (MAX_BODY_CHARS + 1)}, "text", "at most"),
        ({"headers": {"X-Tag": "a\nb"}}, "headers.X-Tag", "control character"),
        ({"headers": {"From": "x@example.com"}}, "headers", "'From' is set by the worker"),
        ({"headers": {"message-id": "<x@y>"}}, "headers", "'message-id' is set by the worker"),
        ({"headers": {"Bad Name": "x"}}, "headers", "not a valid header name"),
        ({"headers": {"Content-Language": "en"}}, "headers", "'Content-Language' describes the"),
        ({"headers": {"content-id": "<p@x>"}}, "headers", "(Content-* headers are refused)"),
        ({"headers": {"Resent-To": "x@example.com"}}, "headers", "'Resent-To' is for a message"),
        ({"headers": {"Resent-Bcc": "x@example.com"}}, "headers", "(Resent-* headers are refused)"),
        ({"headers": {"Orig-Date": "Mon, 1 Jan 2024"}}, "headers", "'Orig-Date' is a structured"),
        ({"headers": {f"X-{i}": "v" for i in range(51)}}, "headers", "at most 50 items"),
        ({"to": [f"u{i}@example.com" for i in range(MAX_RECIPIENTS + 1)]}, "to", "at most 100"),
        (
            {
                "to": [f"u{i}@example.com" for i in range(60)],
                "cc": [f"c{i}@example.com" for i in range(60)],
            },
            "",
            "120 recipients",
        ),
        ({"attachments": [{"filename": "", "content": b"x"}]}, "attachments.0.filename", "blank"),
        (
            {"attachments": [{"filename": "../etc/passwd", "content": b"x"}]},
            "attachments.0.filename",
            "path separators",
        ),
        (
            {"attachments": [{"filename": "a\r\nb", "content": b"x"}]},
            "attachments.0.filename",
            "control character",
        ),
        (
            {"attachments": [{"filename": "a", "content": b"x", "content_type": "pdf"}]},
            "attachments.0.content_type",
            "not a MIME type",
        ),
        (
            {
                "attachments": [
                    {"filename": "a", "content": b"x", "content_type": "text/html\r\nX: y"}
                ]
            },
            "attachments.0.content_type",
            "not a MIME type",
        ),
        (
            {"attachments": [{"filename": "a", "content": b"x", "content_type": "message/rfc822"}]},
            "attachments.0.content_type",
            "cannot be an attachment's type",
        ),
        (
            {
                "attachments": [{"filename": "a", "content": b"x", "content_id": "<a@b>"}],
                "html": "<p>",
            },
            "attachments.0.content_id",
            "not a Content-ID",
        ),
        (
            {"attachments": [{"filename": "a", "content": b"x", "content_id": "a@b"}]},
            "",
            "an inline attachment (content_id) needs an html body",
        ),
        (
            {
                "attachments": [{"filename": "a", "content": b"x", "content_id": "a@b"}] * 2,
                "html": "<p>",
            },
            "",
            "each content_id may be used once",
        ),
        ({"attachments": [{"filename": "a", "content": "x"}] * 51}, "attachments", "at most 50"),
        (
            {"attachments": [{"filename": "a", "content": b"x", "size": 1}]},
            "attachments.0.size",
            "Extra inputs are not permitted",
        ),
        ({"tags": ["two words"]}, "tags.0", "a tag is 1 to 64 letters"),
        ({"tags": ["\x1b[2J"]}, "tags.0", "a tag is 1 to 64 letters"),
        ({"tags": [""]}, "tags.0", "a tag is 1 to 64 letters"),
        ({"tags": ["x" * 65]}, "tags.0", "a tag is 1 to 64 letters"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags", "at most 10 items"),
        ({"tags": "welcome"}, "tags", "Input should be a valid list"),
    ],
)
def test_invalid_tasks_name_the_field(changes: dict[str, Any], location: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EmailTask(**{**BASE, **changes})
    errors = caught.value.errors()
    assert any(
        ".".join(str(p) for p in e["loc"]) == location and message in e["msg"] for e in errors
    ), errors


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("to", "a@example.com", ["a@example.com"]),
        ("to", ["a@example.com", "B <b@example.com>"], ["a@example.com", "B <b@example.com>"]),
        ("to", '"Doe, Jane" <j@example.com>', ['"Doe, Jane" <j@example.com>']),
        ("to", "Jörg <j@bücher.de>", ["Jörg <j@xn--bcher-kva.de>"]),
        ("to", "ops@intranet-host", ["ops@intranet-host"]),
        ("cc", "c@example.com", ["c@example.com"]),
        ("sender", "News <news@example.com>", "News <news@example.com>"),
        ("headers", {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"}, None),
        ("tags", ["welcome", "user:42", "campaign=spring-2027", "a/b@c+d_e.f"], None),
    ],
)
def test_valid_tasks_are_normalized(field: str, value: Any, stored: Any) -> None:
    task = EmailTask(**{**BASE, field: value})
    assert getattr(task, field) == (value if stored is None else stored)


# Every field name the email library parses into a structure of its own, and what aiosmtplib
# deletes when it flattens a message: an extra header with one of these names would be rewritten
# or dropped on one rendering path and not the other.
SPECIAL_HEADERS = sorted({*HeaderRegistry().registry, "bcc", "resent-bcc", "content-language"})


@pytest.mark.parametrize("name", SPECIAL_HEADERS)
def test_headers_the_renderers_treat_specially_are_refused(name: str) -> None:
    for spelling in (name, name.title(), name.upper()):
        with pytest.raises(ValidationError) as caught:
            EmailTask(**{**BASE, "headers": {spelling: "x"}})
        (error,) = caught.value.errors()
        assert error["loc"] == ("headers",)
        assert repr(spelling) in error["msg"]


def test_html_alone_is_enough() -> None:
    assert EmailTask(to="a@example.com", subject="s", html="<p>x</p>").text is None


def test_recipients_are_bare_addresses_of_to_cc_and_bcc() -> None:
    task = EmailTask(
        to="A <a@example.com>", cc="C <c@example.com>", bcc="b@example.com", subject="s", text="x"
    )
    assert task.recipients() == ["a@example.com", "c@example.com", "b@example.com"]


@pytest.mark.parametrize(
    ("fields", "envelope"),
    [
        # In To and Cc (once with a display name): one recipient, where it first appeared.
        (
            {"to": ["a@example.com", "b@example.com"], "cc": "A <a@example.com>"},
            ["a@example.com", "b@example.com"],
        ),
        (
            {"to": "b@example.com", "bcc": ["a@example.com", "b@example.com"]},
            ["b@example.com", "a@example.com"],
        ),
        # The domain is case-insensitive (validation stores it in lower case anyway).
        ({"to": "a@EXAMPLE.com", "cc": "a@example.COM"}, ["a@example.com"]),
        # The local part is not (RFC 5321 2.4): two spellings stay two recipients.
        ({"to": "a@example.com", "cc": "A@example.com"}, ["a@example.com", "A@example.com"]),
    ],
)  # fmt: skip
def test_the_envelope_holds_each_address_once(fields: dict[str, Any], envelope: list[str]) -> None:
    assert EmailTask(**{**BASE, **fields}).recipients() == envelope


@pytest.mark.parametrize(
    ("addresses", "distinct"),
    [
        ([], []),
        (["a@example.com", "a@example.com"], ["a@example.com"]),
        (["a@Example.com", "b@example.com", "a@example.COM"], ["a@Example.com", "b@example.com"]),
        (["Joe@example.com", "joe@example.com"], ["Joe@example.com", "joe@example.com"]),
        # Only the last @ splits: a quoted local part may hold one.
        (['"a@b"@example.com', '"a@b"@EXAMPLE.com'], ['"a@b"@example.com']),
    ],
)
def test_distinct_addresses(addresses: list[str], distinct: list[str]) -> None:
    assert distinct_addresses(addresses) == distinct


def test_bodies_stay_out_of_repr() -> None:
    task = EmailTask(to="a@example.com", subject="s", text="secret body", html="<b>secret</b>")
    assert "secret" not in repr(task)
