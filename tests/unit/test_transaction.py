"""The pure parts of the worker's SMTP transaction: reading replies, writing the message."""

from __future__ import annotations

import aiosmtplib
import pytest

from service.worker.pipelining import parse_replies
from service.worker.transaction import dot_stuffed, envelope_address


@pytest.mark.parametrize(
    ("buffer", "replies", "consumed"),
    [
        (b"", [], 0),
        (b"250 OK", [], 0),  # no line end yet
        (b"250 OK\r\n", [(250, "OK")], 8),
        (b"250 OK\r\n550 5.1.1 no\r\n354 go", [(250, "OK"), (550, "5.1.1 no")], 22),
        (b"250-first\r\n250-second\r\n", [], 0),  # a multi-line reply still coming
        (b"250-first\r\n250 last\r\n", [(250, "first\nlast")], 21),
        (b"250\r\n", [(250, "")], 5),  # a bare code
        (b"250 OK\n", [(250, "OK")], 7),  # LF alone, as aiosmtplib accepts
        (b"250 caf\xc3\xa9\r\n", [(250, "café")], 11),
        (b"250 " + b"x" * 8186 + b"\r\n", [(250, "x" * 8186)], 8192),  # the longest line
        (b"250-a\r\n250-b\r\n250 c\r\n221 bye\r\n", [(250, "a\nb\nc"), (221, "bye")], 30),
    ],
)
def test_complete_replies_are_parsed_and_the_rest_left(
    buffer: bytes, replies: list[tuple[int, str]], consumed: int
) -> None:
    parsed = parse_replies(buffer)

    assert [(r.code, r.message) for r in parsed.replies] == replies
    assert parsed.consumed == consumed


@pytest.mark.parametrize(
    ("buffer", "error"),
    [
        (b"hello\r\n", "Malformed SMTP response line: hello"),
        (b"25 OK\r\n", "Malformed SMTP response line"),
        (b"25\n", "Malformed SMTP response line"),  # a code has three digits
        (b"250-a\r\n2\r\n", "Malformed SMTP response line"),
        (b"250 " + b"x" * 9000 + b"\r\n", "Response too long"),
        (b"250 " + b"x" * 8187 + b"\r\n", "Response too long"),  # one octet too long
    ],
)
def test_a_reply_no_server_would_send_is_an_error(buffer: bytes, error: str) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException, match=error) as raised:
        parse_replies(buffer)

    assert raised.value.code == -1


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),  # a last line end is added
        (b".a\r\n..b\r\nc.\r\n", b"..a\r\n...b\r\nc.\r\n.\r\n"),  # every leading dot doubled
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),  # lone LF and CR become CRLF
        (b"\r\n.\r\n", b"\r\n..\r\n.\r\n"),  # a lone dot in the body cannot end it early
        (b"a\n.b\r\n", b"a\r\n..b\r\n.\r\n"),  # both at once
        (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n.\r\n"),  # a lone CR just before a CRLF
    ],
)
def test_the_message_goes_out_as_aiosmtplib_would_write_it(content: bytes, wire: bytes) -> None:
    assert dot_stuffed(content) == wire


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        ("app@example.com", b"<app@example.com>"),
        ("first.last+tag@mail.example.co.uk", b"<first.last+tag@mail.example.co.uk>"),
        ('"a b"@example.com', b'<"a b"@example.com>'),  # a quoted local part may hold a space
        ("user@[192.0.2.1]", b"<user@[192.0.2.1]>"),  # an address literal
        ("jörg@bücher.example", "<jörg@bücher.example>".encode()),  # UTF-8: SMTPUTF8
        ("a@example.com\r\nRCPT TO:<x@evil.test>", None),  # a second command
        ("a@example.com> SIZE=1", None),  # a parameter
        ("App <app@example.com>", None),  # not a bare address
        ("a b@example.com", None),
        ('"a\r\nb"@example.com', None),
        ("a@exa mple.com", None),
        ("", None),
        ("a@", None),
        ("@example.com", None),
    ],
)
def test_only_a_bare_address_goes_into_a_command(address: str, wire: bytes | None) -> None:
    if wire is None:
        with pytest.raises(ValueError, match="not a bare address"):
            envelope_address(address)
    else:
        assert envelope_address(address) == wire
