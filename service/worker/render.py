"""Turning a task into the bytes and envelope the SMTP server receives (pure, no I/O).

One renderer for every email the task model allows, writing MIME itself: text, HTML, both as
multipart/alternative, inline images (multipart/related around the HTML) and attachments
(multipart/mixed around the rest). The standard library's generator re-parses every header and
re-encodes every body on each message, which was most of a worker's CPU; here each piece is
written once, in the cheapest encoding that is valid for it, and what repeats between emails
(addresses, dates) is cached. The standard library stays the judge: property tests parse what
this writes and compare it with the task (tests/unit/test_render_equivalence.py).

Encodings:
- Headers: printable ASCII words are written as they are, folded at spaces to 78 characters
  where a line would be longer; anything else (non-ASCII, runs of spaces, one very long word)
  as RFC 2047 encoded words (UTF-8, base64), which carry any text exactly.
- Text bodies: line ends become CRLF and the body ends with one; then `7bit` when it is ASCII
  with lines of at most 998 octets (RFC 5322 2.1.1) and no control characters, `8bit` for the
  same in UTF-8 when the server offers 8BITMIME, and otherwise quoted-printable for mostly
  ASCII text or base64 for mostly non-ASCII text, whichever is shorter.
- Attachments: base64, filenames as a quoted string, or per RFC 2231 (UTF-8, percent-encoded,
  split into continuations) when they are not short printable ASCII.
- Addresses: display names as written when ASCII, else encoded words; an address that is not
  ASCII itself (possible only for a configured sender) is written as UTF-8 and needs SMTPUTF8.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import functools
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final, Self

import pybase64

from ..task import Attachment, addr_spec, distinct_addresses
from ..wire import QueuedTask

__all__ = ["Content", "Outgoing", "render"]

# RFC 5322 2.1.1: lines SHOULD stay within 78 characters and MUST within 998 (CRLF aside).
_FOLD_AT: Final = 78
_MAX_LINE: Final = 998
# Printable ASCII words separated by single spaces: written as they are (folded if long).
_PLAIN_WORDS: Final = re.compile(r"[!-~]+(?: [!-~]+)*")
_QUOTED_PAIR: Final = re.compile(r"\\(.)")
# An encoded word is at most 75 characters (RFC 2047 2); at 36 bytes (12 of syntax and 48 of
# base64) one still fits on the first line beside a field name of up to 16 characters.
_WORD_BYTES: Final = 36
_NAME_WORD_BYTES: Final = 700
# Control characters other than TAB, CR and LF: 7bit and 8bit data may not hold NUL (RFC 2045
# 2.7, 2.8) and clients mangle the others, so a body with any is sent encoded (=XX or base64)
# and arrives exactly as written.
_BODY_CONTROL: Final = frozenset(range(0x20)).union({0x7F}).difference(b"\t\r\n")
# `bytes.translate` deleting every other octet leaves the controls: one C pass, several times
# faster than a regular expression's character class.
_NOT_BODY_CONTROL: Final = bytes(sorted(frozenset(range(256)).difference(_BODY_CONTROL)))
_LINE_END: Final = re.compile(r"\r\n|\r|\n")
# RFC 2231 attribute-char: what a parameter value may hold without percent-encoding.
_ATTRIBUTE_CHARS: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
_PERCENT: Final = tuple(
    chr(byte) if byte in _ATTRIBUTE_CHARS else f"%{byte:02X}" for byte in range(256)
)
# A filename written as a quoted string: printable ASCII, short enough for one line.
_QUOTABLE_NAME: Final = re.compile(r"[ -~]{1,60}")
_PARAMETER_CHUNK: Final = 50


class Content:
    """A rendered message's bytes, in the 8-bit and the 7-bit form (each built once, on use).

    Most emails are the same in both; a text part in UTF-8 goes `8bit` to a server that offers
    8BITMIME and quoted-printable or base64 to one that does not.
    """

    __slots__ = ("_eightbit", "_segments", "_sevenbit")

    def __init__(self, segments: list[_Segment]) -> None:
        self._segments = segments
        self._eightbit: tuple[bytes, bool] | None = None
        self._sevenbit: tuple[bytes, bool] | None = None

    def data(self, *, eightbit: bool) -> bytes:
        """The message, CRLF line ends, not dot-stuffed."""
        return self._form(eightbit=eightbit)[0]

    def plain_lines(self, *, eightbit: bool) -> bool:
        """Whether every line of `data(eightbit)` ends in CRLF and none starts with a dot: then
        SMTP's DATA carries it as it is (RFC 5321 4.5.2), with no scan of the whole message.
        False says nothing: the transaction looks for itself."""
        return self._form(eightbit=eightbit)[1]

    def _form(self, *, eightbit: bool) -> tuple[bytes, bool]:
        if eightbit:
            if self._eightbit is None:
                self._eightbit = self._join(eightbit=True)
            return self._eightbit
        if self._sevenbit is None:
            self._sevenbit = self._join(eightbit=False)
        return self._sevenbit

    def _join(self, *, eightbit: bool) -> tuple[bytes, bool]:
        """The bytes, and whether their lines are plain. Bodies, most of an email's bytes, are
        known plain or not from how they were written and are not scanned; every other piece
        is small, and is checked (each must end a line, so the next one starts one)."""
        pieces: list[bytes] = []
        checked: list[bytes] = []
        known_plain = True
        for segment in self._segments:
            if isinstance(segment, _PlainLines):
                pieces.append(segment.lines)
                continue
            if isinstance(segment, bytes):
                piece = segment
                checked.append(piece)
            else:
                piece = segment.encoded(eightbit=eightbit)
                if eightbit:
                    known_plain = known_plain and segment.undotted
                else:
                    checked.append(piece)
            pieces.append(piece)
        data = b"".join(pieces)
        # An empty message has no line end: DATA's own rules (`dot_stuffed`) add one.
        return data, bool(data) and known_plain and _plain_pieces(checked)


def _plain_pieces(pieces: list[bytes]) -> bool:
    """Whether every one of `pieces` is whole lines, each ending in CRLF, none starting with a
    dot. One pass over them all, not a call per piece: an email with an attachment has some
    fifteen (boundaries, part headers), and each call cost as much as joining them."""
    # NUL after each piece marks where it ends: a piece ends a line when CRLF comes before its
    # NUL, and starts one with a dot when a dot comes after the NUL before it. A NUL of a
    # piece's own only makes the answer False, which says nothing (see Content.plain_lines).
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        return True
    joined = b"\0".join(pieces) + b"\0"
    line_ends = joined.count(b"\r\n")
    return (
        joined.count(b"\0") == len(pieces)
        and joined.count(b"\r\n\0") == len(pieces)
        and joined.count(b"\r") == line_ends
        and joined.count(b"\n") == line_ends
        and not joined.startswith(b".")
        and b"\0." not in joined
        and b"\n." not in joined
    )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A rendered email: the SMTP envelope and the message's bytes."""

    mail_from: str
    recipients: list[str]
    smtputf8: bool  # the envelope or headers need the server's SMTPUTF8
    content: Content = field(repr=False)

    @classmethod
    def prebuilt(
        cls, data: bytes, mail_from: str, recipients: list[str], *, smtputf8: bool = False
    ) -> Self:
        """An email whose bytes are already written (7-bit, CRLF), e.g. in tests."""
        return cls(mail_from, recipients, smtputf8, Content([data]))

    def data(self, *, eightbit: bool) -> bytes:
        """The message, CRLF, not dot-stuffed; `eightbit` when the server offers 8BITMIME."""
        return self.content.data(eightbit=eightbit)

    def plain_lines(self, *, eightbit: bool) -> bool:
        """Whether DATA may carry `data(eightbit)` as it is (see `Content.plain_lines`)."""
        return self.content.plain_lines(eightbit=eightbit)

    @property
    def message(self) -> EmailMessage:
        """The email parsed back by the standard library (for tests and debugging)."""
        data = self.data(eightbit=True).replace(b"\r\n", b"\n")
        if self.smtputf8:  # UTF-8 headers (RFC 6532): the bytes parser reads them as ASCII
            return email.message_from_string(
                data.decode(), _class=EmailMessage, policy=email.policy.default
            )
        return email.message_from_bytes(data, _class=EmailMessage, policy=email.policy.default)


def render(queued: QueuedTask, *, default_sender: str, default_mail_from: str = "") -> Outgoing:
    """Build the email for `queued`.

    Date (when the task was enqueued, or due if scheduled) and Message-ID (from the task id,
    fixed at enqueue) do not depend on the moment of sending, so every redelivery or retry of a
    task produces the same message and a duplicate is recognisable downstream. A retry after
    some recipients were accepted sends to the others only (the envelope, not the headers).
    `default_mail_from` is the bare address of `default_sender`, when the caller has it.
    Raises ValueError for what cannot be written (a sender address the task model refuses).
    """
    task = queued.task
    if task.sender:
        sender, mail_from = task.sender, addr_spec(task.sender)
    else:
        sender, mail_from = default_sender, default_mail_from or addr_spec(default_sender)
    head = [_address_header("From", [sender]), _address_header("To", task.to)]
    if task.cc:
        head.append(_address_header("Cc", task.cc))
    if task.reply_to:
        head.append(_address_header("Reply-To", task.reply_to))
    head.append(_text_header("Subject", task.subject))
    head.append(_date_header(queued.dated_ms // 1000))
    head.append(_message_id(queued.task_id, mail_from))
    head.extend(_text_header(name, value) for name, value in task.headers.items())
    head.append("MIME-Version: 1.0\r\n")
    lines = "".join(head)
    # Each address once, also in a retry copy written before envelopes were made distinct.
    recipients = distinct_addresses(queued.envelope_recipients())
    smtputf8 = not (lines.isascii() and mail_from.isascii() and all(map(str.isascii, recipients)))
    segments: list[_Segment] = [lines.encode()]
    _body(segments, task.text, task.html, task.attachments)
    return Outgoing(mail_from, recipients, smtputf8, Content(segments))


# Headers ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _date_header(seconds: int) -> str:
    """The Date line for a second since the epoch: a burst of emails shares a few of them."""
    return f"Date: {format_datetime(datetime.fromtimestamp(seconds, tz=UTC))}\r\n"


def _message_id(task_id: str, mail_from: str) -> str:
    domain = mail_from.rpartition("@")[2]
    return _fold("Message-ID", [f"<{task_id}@{domain}>"])


def _text_header(name: str, value: str) -> str:
    """An unstructured field (Subject, extra headers), folded, encoded where it must be."""
    if len(value) + len(name) + 2 <= _FOLD_AT and _PLAIN_WORDS.fullmatch(value):
        return f"{name}: {value}\r\n"
    return _encoded_text_header(name, value)


@functools.lru_cache(maxsize=1024)
def _encoded_text_header(name: str, value: str) -> str:
    if not value:
        return f"{name}:\r\n"
    if _PLAIN_WORDS.fullmatch(value):
        words = value.split(" ")
        if max(map(len, words)) < _MAX_LINE - len(name) - 2:
            return _fold(name, words)
    return _fold(name, _encoded_words(value))


def _address_header(name: str, mailboxes: list[str]) -> str:
    words: list[str] = []
    for mailbox in mailboxes:
        if words:
            words[-1] += ","
        words.extend(_mailbox_words(mailbox))
    return _fold(name, words)


@functools.lru_cache(maxsize=4096)
def _mailbox_words(mailbox: str) -> tuple[str, ...]:
    """One mailbox (as validation normalized it) as the words of an address header."""
    if mailbox.isascii() and len(mailbox) <= _FOLD_AT - 12:
        return tuple(mailbox.split(" "))
    name, address = _name_and_address(mailbox)
    if not name:
        return (address,)
    # In a display name the standard library keeps the space between two encoded words where
    # RFC 2047 6.2 drops it: one word, longer than 75 characters if need be, reads the same
    # everywhere (split only past what fits on a line).
    return (*_encoded_words(name, size=_NAME_WORD_BYTES), f"<{address}>")


def _name_and_address(mailbox: str) -> tuple[str, str]:
    """The display name and address of a mailbox as validation wrote it (`str(Address)`).

    That is `address`, `Name <address>` or `"Name" <address>` (quoted, with `\\` and `\"`
    escaped, when the name holds specials); the address holds no `<`. Anything else is
    parsed by the standard library.
    """
    if not mailbox.endswith(">"):
        if " " not in mailbox and "<" not in mailbox:
            return "", mailbox
    else:
        start = mailbox.rfind(" <")
        name, address = mailbox[:start], mailbox[start + 2 : -1]
        if start > 0 and '"' not in address and " " not in address:
            if len(name) > 1 and name[0] == name[-1] == '"':
                return _QUOTED_PAIR.sub(r"\1", name[1:-1]), address
            if '"' not in name and "\\" not in name:
                return name, address
    parsed = email.policy.default.header_factory("to", mailbox).addresses
    if len(parsed) != 1:
        raise ValueError(f"{mailbox!r} is not a single email address")
    return parsed[0].display_name, parsed[0].addr_spec


def _encoded_words(text: str, *, size: int = _WORD_BYTES) -> list[str]:
    """`text` as RFC 2047 encoded words (UTF-8, base64), each whole characters."""
    data = text.encode()
    words = []
    while data:
        cut = min(size, len(data))
        while cut < len(data) and data[cut] & 0xC0 == 0x80:  # inside a character: back off
            cut -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[:cut]).decode()}?=")
        data = data[cut:]
    return words


def _fold(name: str, words: list[str] | tuple[str, ...]) -> str:
    """`name: words` with single spaces, broken before a word where a line would pass 78."""
    lines = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > _FOLD_AT and line[-1] != ":":
            lines.append(line)
            line = ""
        line += f" {word}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


# Bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TextPart:
    """A UTF-8 text part: `8bit` where the server takes it, else quoted-printable or base64."""

    subtype: str
    data: bytes  # CRLF line ends, lines of at most 998 octets, no control characters
    undotted: bool  # no line of `data` starts with a dot: the 8bit form's lines are plain

    def encoded(self, *, eightbit: bool) -> bytes:
        if eightbit:
            return _text_head(self.subtype, "8bit") + self.data
        return _transfer_encoded(self.subtype, self.data, chars=len(self.data.decode()))


@dataclass(frozen=True, slots=True)
class _PlainLines:
    """Bytes that are, by how they were written, whole CRLF lines none of which starts with a
    dot (base64 has no dot; a 7bit body's dots were looked for): DATA carries them as they are.
    """

    lines: bytes


_Segment = bytes | _TextPart | _PlainLines


def _body(
    segments: list[_Segment],
    text: str | None,
    html: str | None,
    attachments: list[Attachment],
) -> None:
    """Append the message's Content-* headers, a blank line and its body to `segments`."""
    token = _boundary_token()
    while any(body is not None and token.decode() in body for body in (text, html)):
        token = _boundary_token()  # a chance of 2**-64, unless the body echoes this email
    parts: list[list[_Segment]] = []
    if text is not None:
        parts.append([_text_part("plain", text)])
    if html is not None:
        html_part: list[_Segment] = [_text_part("html", html)]
        inline = [_attachment(a) for a in attachments if a.content_id is not None]
        if inline:
            html_part = _multipart("related", token, [html_part, *inline])
        parts.append(html_part)
    tree = parts[0] if len(parts) == 1 else _multipart("alternative", token, parts)
    regular = [_attachment(a) for a in attachments if a.content_id is None]
    if regular:
        tree = _multipart("mixed", token, [tree, *regular])
    segments.extend(tree)


def _boundary_token() -> bytes:
    # "=_" appears in neither quoted-printable (= then hex) nor base64 output (no "_"), so only
    # 7bit and 8bit bodies need checking for it.
    return b"=_%016x" % random.getrandbits(64)


def _multipart(subtype: str, token: bytes, parts: list[list[_Segment]]) -> list[_Segment]:
    boundary = token + b"_" + subtype[0].encode()
    segments: list[_Segment] = [
        b'Content-Type: multipart/%s;\r\n boundary="%s"\r\n\r\n' % (subtype.encode(), boundary)
    ]
    for part in parts:
        segments.append(b"--%s\r\n" % boundary)
        segments.extend(part)
        segments.append(b"\r\n")
    segments.append(b"--%s--\r\n" % boundary)
    return segments


def _text_part(subtype: str, body: str) -> _Segment:
    """A text/`subtype` part, headers included, in the cheapest valid encoding."""
    lines = _crlf_lines(body)
    data = lines.encode()
    if _has_control(data) or _has_long_line(data):
        return _transfer_encoded(subtype, data, chars=len(lines))
    # `_crlf_lines` wrote every line end as CRLF: only a dot starting a line can keep DATA
    # from carrying the body as it is, and one search finds it (a body is most of an email's
    # bytes: it is not scanned again when the message is joined).
    undotted = not (data.startswith(b".") or b"\n." in data)
    if data.isascii():
        part = _text_head(subtype, "7bit") + data
        return _PlainLines(part) if undotted else part
    return _TextPart(subtype, data, undotted)


def _has_control(data: bytes) -> bool:
    """Whether `data` holds a control character other than TAB, CR and LF."""
    return bool(data.translate(None, _NOT_BODY_CONTROL))


def _has_long_line(data: bytes) -> bool:
    """Whether a line of `data` (CRLF line ends) is longer than 998 octets."""
    return len(data) > _MAX_LINE and max(map(len, data.split(b"\r\n"))) > _MAX_LINE


def _crlf_lines(body: str) -> str:
    """`body` with every line end (CR, LF or CRLF) as CRLF, ending with one."""
    body = _LINE_END.sub("\r\n", body) if "\r" in body else body.replace("\n", "\r\n")
    return body if body.endswith("\r\n") else body + "\r\n"


@functools.lru_cache(maxsize=32)
def _text_head(subtype: str, encoding: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode()


def _transfer_encoded(subtype: str, data: bytes, *, chars: int) -> bytes:
    """Quoted-printable (1 byte per ASCII byte, 3 per other) or base64 (4 per 3): the shorter.

    `chars` is how many characters `data` holds in UTF-8.
    """
    # Quoted-printable adds 2 bytes per non-ASCII byte, base64 a third of all: it is shorter
    # while fewer than a sixth of the bytes are non-ASCII. A character takes one byte more
    # than in ASCII for each two non-ASCII bytes (about: Latin and Cyrillic letters take 2).
    if (len(data) - chars) * 12 < len(data):
        encoded = binascii.b2a_qp(data, istext=True)
        return _text_head(subtype, "quoted-printable") + encoded
    return _text_head(subtype, "base64") + _base64_lines(data)


def _base64_lines(data: bytes) -> bytes:
    """`data` in base64, lines of 76 characters ending in CRLF (RFC 2045 6.8)."""
    # pybase64 encodes (vectorized) and cuts the lines in C; only their ends need widening.
    return pybase64.encodebytes(data).replace(b"\n", b"\r\n")


def _attachment(attachment: Attachment) -> list[_Segment]:
    disposition = "attachment" if attachment.content_id is None else "inline"
    name = attachment.filename
    head = [
        f"Content-Type: {attachment.content_type}{_parameter('name', name)}\r\n",
        f"Content-Disposition: {disposition}{_parameter('filename', name)}\r\n",
        "Content-Transfer-Encoding: base64\r\n",
    ]
    if attachment.content_id is not None:
        head.append(f"Content-ID: <{attachment.content_id}>\r\n")
    head.append("\r\n")
    return ["".join(head).encode(), _PlainLines(_base64_lines(attachment.content))]


@functools.lru_cache(maxsize=1024)
def _parameter(name: str, value: str) -> str:
    """`; name="value"`, or RFC 2231's `name*0*=utf-8''...` continuations where it must."""
    if _QUOTABLE_NAME.fullmatch(value):
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return f';\r\n {name}="{quoted}"'
    encoded = "".join([_PERCENT[byte] for byte in value.encode()])
    chunks = []
    while encoded:
        cut = min(_PARAMETER_CHUNK, len(encoded))
        # Never split a %XX triple.
        percent = encoded.rfind("%", max(0, cut - 2), cut)
        if percent != -1 and cut < len(encoded):
            cut = percent
        chunks.append(encoded[:cut])
        encoded = encoded[cut:]
    chunks[0] = "utf-8''" + chunks[0]
    if len(chunks) == 1:
        return f";\r\n {name}*={chunks[0]}"
    return "".join(f";\r\n {name}*{index}*={chunk}" for index, chunk in enumerate(chunks))
