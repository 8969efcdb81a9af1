"""`EmailTask`: what a producer asks the worker to send, validated before it reaches the queue.

Validation is strict because a task that passes it is sent as-is by a worker that cannot ask the
producer what it meant: addresses are checked without DNS (never block the event loop), header
values and display names may hold no control characters (a CR/LF there would let a caller inject
headers), headers the worker owns cannot be overridden, and sizes are bounded so one bad task
cannot exhaust Redis or the SMTP server.
"""

from __future__ import annotations

import email.policy
import functools
import re
import unicodedata
from collections.abc import Iterable
from email.headerregistry import Address, HeaderRegistry
from typing import Annotated, Any, Final

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from .keys import Lane

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_BODY_CHARS",
    "MAX_HEADERS",
    "MAX_HEADER_CHARS",
    "MAX_RECIPIENTS",
    "MAX_TAGS",
    "RESERVED_HEADERS",
    "Attachment",
    "EmailAddress",
    "EmailTask",
    "addr_spec",
    "distinct_addresses",
]

# RFC 5321 4.5.3.1.8 asks servers to accept at least 100 recipients; more is a mailing-list job.
MAX_RECIPIENTS: Final = 100
# RFC 5322 2.1.1: a header line may not exceed 998 characters.
MAX_HEADER_CHARS: Final = 998
MAX_HEADERS: Final = 50
# Far above any real transactional email, far below what would hurt a Redis instance.
MAX_BODY_CHARS: Final = 2_000_000
# Attachments are bounded in number here and in size by the producer's per-email budget.
MAX_ATTACHMENTS: Final = 50
_MAX_FILENAME_CHARS: Final = 255
# RFC 2045 5.1: type "/" subtype, each a token (no specials, spaces or controls).
_MIME_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}"  # noqa: S105 - a pattern, no secret
_CONTENT_TYPE: Final = re.compile(rf"{_MIME_TOKEN}/{_MIME_TOKEN}")
# A Content-ID is an addr-spec-like dot-atom (RFC 2392); `cid:` URLs in the HTML name it.
_CONTENT_ID: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,100}(?:@[A-Za-z0-9.-]{1,100})?")
# Tags label a task for the people who look for it later ("welcome", "user:42"): a few short
# words, kept in log lines and dead letters, never sent.
MAX_TAGS: Final = 10
MAX_TAG_CHARS: Final = 64
# Letters, digits and a few separators: a tag is safe in a log line, a URL and a shell.
_TAG = re.compile(rf"[A-Za-z0-9_.:@/=+-]{{1,{MAX_TAG_CHARS}}}")

# Headers the worker derives from the task's own fields or from the transport; letting `headers`
# set them would make two sources of truth (or forge routing), so they are refused by name.
RESERVED_HEADERS: Final = frozenset(
    {
        "bcc",
        "cc",
        "content-transfer-encoding",
        "content-type",
        "date",
        "from",
        "message-id",
        "mime-version",
        "reply-to",
        "return-path",
        "sender",
        "subject",
        "to",
    }
)

# RFC 5322 2.2: a field name is printable US-ASCII except the colon.
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
# Extra headers are unstructured fields, sent as given by every rendering path. Beyond the
# reserved ones, three kinds could not be, so they are refused here rather than lost later:
# Content-* describe the body, which the worker builds (the email library clears them when it
# sets one, and moves them into a part of a multipart); Resent-* belong to a message a user
# sends again (RFC 5322 3.6.6), not to a new one, and aiosmtplib deletes Resent-Bcc when it
# flattens a message; and the other fields the email library parses into a structure of its
# own (its header registry) it would rewrite.
_STRUCTURED_HEADERS: Final = frozenset(HeaderRegistry().registry)


# Control characters (CR, LF, NUL...) and the Unicode line and paragraph separators, which the
# email library also treats as line breaks.
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})


def _reject_control_characters(value: str) -> str:
    """Refuse every character that could end a header line or corrupt it."""
    if value.isprintable():  # no Cc, Zl or Zp (nor other unprintables): the common case
        return value
    for char in value:
        if unicodedata.category(char) in _LINE_BREAKING:
            raise ValueError(f"contains the control character {char!r}")
    return value


def _check_header_text(value: str) -> str:
    """A header value: no control characters, and no RFC 2047 encoded words.

    The email library decodes `=?utf-8?q?...?=` before writing the header out again, so an
    encoded CR/LF would pass a check on the raw text and then inject headers. The library
    encodes non-ASCII text itself: callers never need to.
    """
    _reject_control_characters(value)
    if "=?" in value:
        raise ValueError("contains '=?' (RFC 2047 encoded words are refused; pass plain text)")
    return value


def _check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise ValueError(
            f"a tag is 1 to {MAX_TAG_CHARS} letters, digits or any of _.:@/=+- (not {tag[:70]!r})"
        )
    return tag


def _header_name_problem(name: str) -> str | None:
    """Why `name` cannot be an extra header, or None if it can."""
    lowered = name.lower()
    if not _HEADER_NAME.fullmatch(name):
        return "is not a valid header name"
    if lowered in RESERVED_HEADERS:
        return "is set by the worker and cannot be overridden"
    if lowered.startswith("content-"):
        return "describes the body, which the worker builds (Content-* headers are refused)"
    if lowered.startswith("resent-"):
        return "is for a message sent again, not a new one (Resent-* headers are refused)"
    if lowered in _STRUCTURED_HEADERS:
        return "is a structured field the email library would rewrite (refused)"
    return None


def _check_header_names(headers: dict[str, str]) -> dict[str, str]:
    for name in headers:
        problem = _header_name_problem(name)
        if problem is not None:
            raise ValueError(f"{name!r} {problem}")
    return headers


# Addresses repeat (a sender, a newsletter's list): a worker validates every task it decodes, and
# parsing one address costs more than the rest of a task. Both are pure functions of a string;
# a refused address raises and so is never cached.
_ADDRESS_CACHE_SIZE: Final = 4096
# Most mailboxes are already in the form validation writes: `local@domain` or `Name <local@domain>`
# with a dot-atom local part, a lower-case ASCII domain and a display name of words (letters,
# digits, some marks; no specials, quotes, `=?`, or runs of spaces). The full parse (the email
# library's header parser, then email_validator) returns such a mailbox unchanged, and costs
# about 150 µs: most of what a worker spends decoding a task, since each recipient is new to it.
# For this shape only the domain is left to check, once per domain. Anything else goes the full
# way; tests/unit/test_address_shortcut.py checks that the short way never accepts what the
# full way would refuse or rewrite.
_WORD_CHARS: Final = r"\w'!#$%&*+/=^`{|}~-"  # atext without "?" (no encoded word), plus letters
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+"
_SIMPLE_MAILBOX: Final = re.compile(
    rf"(?:(?P<name>[{_WORD_CHARS}]+(?: [{_WORD_CHARS}]+)*) <)?"
    rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>[a-z0-9.-]{{1,253}})(?(name)>)"
)
# RFC 5321 4.5.3.1.3, as email_validator counts it.
_MAX_ADDRESS_CHARS: Final = 254


@functools.lru_cache(maxsize=_ADDRESS_CACHE_SIZE)
def _parse_address(value: str) -> str:
    """Validate one mailbox (`a@example.com` or `Name <a@example.com>`); return it normalized."""
    if _is_simple_mailbox(value):
        return value
    return _parse_address_fully(value)


def _is_simple_mailbox(value: str) -> bool:
    """Whether `value` has the simple shape above and the full parse would return it unchanged."""
    simple = _SIMPLE_MAILBOX.fullmatch(value)
    if simple is None:
        return False
    local, domain = simple["local"], simple["domain"]
    return (
        len(local) + 1 + len(domain) <= _MAX_ADDRESS_CHARS
        # email_validator lower-cases these (RFC 2142) local parts.
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
        and _domain_kept(domain)
    )


@functools.lru_cache(maxsize=1024)
def _domain_kept(domain: str) -> bool:
    """Whether the full parse accepts `domain` and keeps it as written (once per domain)."""
    probe = f"a@{domain}"
    try:
        return _parse_address_fully(probe) == probe
    except ValueError:
        return False


def _parse_address_fully(value: str) -> str:
    """Validate one mailbox with the email library's parser and email_validator."""
    _reject_control_characters(value)
    try:
        header = email.policy.default.header_factory("to", value)
    except Exception:  # noqa: BLE001 - the stdlib parser raises IndexError on some inputs
        header = None
    if (
        header is None
        or len(header.addresses) != 1
        # Also refuses non-ASCII local parts: they need SMTPUTF8, which few servers offer.
        or header.defects
    ):
        raise ValueError(f"{value!r} is not a single email address")
    mailbox = header.addresses[0]
    _check_header_text(mailbox.display_name)  # the parser decoded any encoded words in it
    try:
        # No DNS: deliverability is the SMTP server's business, and a lookup would block.
        checked = validate_email(
            mailbox.addr_spec, check_deliverability=False, globally_deliverable=False
        )
    except EmailNotValidError as exc:
        raise ValueError(f"{mailbox.addr_spec!r} is not a valid email address: {exc}") from None
    # ASCII form (IDNA domain): servers without SMTPUTF8 accept it.
    address = checked.ascii_email or checked.normalized
    return str(Address(display_name=mailbox.display_name, addr_spec=address))


def _check_filename(name: str) -> str:
    """A name without control characters or path separators; spaces around it are dropped
    (mail clients drop them too)."""
    _reject_control_characters(name)
    name = name.strip()
    if not name or "/" in name or "\\" in name:
        raise ValueError("a filename is a non-blank name without path separators")
    return name


def _check_content_type(value: str) -> str:
    if not _CONTENT_TYPE.fullmatch(value):
        raise ValueError(f"{value[:70]!r} is not a MIME type (type/subtype)")
    if value.lower().startswith(("multipart/", "message/")):
        # Their parts are parsed as MIME structure, and base64 is not allowed for them
        # (RFC 2046 5.2.1): send such a file as application/octet-stream.
        raise ValueError(f"{value[:70]!r} cannot be an attachment's type")
    return value.lower()


def _check_content_id(value: str | None) -> str | None:
    if value is not None and not _CONTENT_ID.fullmatch(value):
        raise ValueError(f"{value[:70]!r} is not a Content-ID (letters, digits, .-_@..., no <>)")
    return value


class Attachment(BaseModel):
    """A file sent with the email.

    `content` is the file's bytes, sent as they are (base64 on the wire). With `content_id`
    the file is inline: an image the HTML body shows as `<img src="cid:CONTENT_ID">` (the task
    then needs `html`). `filename` may hold any printable characters (non-ASCII names are
    encoded per RFC 2231); `content_type` defaults to `application/octet-stream`.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )

    filename: Annotated[str, Field(max_length=_MAX_FILENAME_CHARS), AfterValidator(_check_filename)]
    # Kept out of repr() like the bodies: a file in a traceback is content, and large.
    content: bytes = Field(repr=False)
    content_type: Annotated[str, AfterValidator(_check_content_type)] = "application/octet-stream"
    content_id: Annotated[str | None, AfterValidator(_check_content_id)] = None


def _as_list(value: Any) -> Any:
    """Let callers pass one address where a list is expected."""
    return [value] if isinstance(value, str) else value


EmailAddress = Annotated[str, AfterValidator(_parse_address)]
"""One mailbox, `a@example.com` or `Name <a@example.com>`, stored normalized."""

_AddressList = Annotated[
    list[EmailAddress], BeforeValidator(_as_list), Field(max_length=MAX_RECIPIENTS)
]
_HeaderText = Annotated[str, Field(max_length=MAX_HEADER_CHARS), AfterValidator(_check_header_text)]
_Body = Annotated[str, Field(max_length=MAX_BODY_CHARS)]
_Headers = Annotated[
    dict[str, _HeaderText], Field(max_length=MAX_HEADERS), AfterValidator(_check_header_names)
]
_Tag = Annotated[str, AfterValidator(_check_tag)]


class EmailTask(BaseModel):
    """One email to send.

    `to`, `cc`, `bcc` and `reply_to` take one address or a list; `sender` defaults to the worker's
    `MAIL_FROM`; at least one of `text` and `html` is required; `headers` adds extra headers
    (not those in `RESERVED_HEADERS`, nor Content-* or Resent-*); `tags` label the task in log
    lines and dead letters (up to 10 words of letters, digits and `_.:@/=+-`); `attachments` are
    files sent with it (`Attachment`, regular or inline); `priority` picks its lane (`high` for
    transactional mail, `low` for bulk: high is read first and low keeps a share, see the
    README). Invalid input raises
    `pydantic.ValidationError`, whose errors name the offending field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    to: _AddressList = Field(min_length=1)
    cc: _AddressList = Field(default_factory=list)
    bcc: _AddressList = Field(default_factory=list)
    reply_to: _AddressList = Field(default_factory=list)
    sender: EmailAddress | None = None
    subject: _HeaderText
    # Bodies stay out of repr() so a task printed in a traceback or log never leaks its content.
    text: _Body | None = Field(default=None, repr=False)
    html: _Body | None = Field(default=None, repr=False)
    headers: _Headers = Field(default_factory=dict)
    tags: list[_Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    priority: Lane = "normal"

    @model_validator(mode="after")
    def _check_whole_task(self) -> EmailTask:
        if self.text is None and self.html is None:
            raise ValueError("text or html is required")
        recipients = len(self.to) + len(self.cc) + len(self.bcc)
        if recipients > MAX_RECIPIENTS:
            raise ValueError(f"{recipients} recipients in to, cc and bcc; at most {MAX_RECIPIENTS}")
        if self.html is None and any(a.content_id is not None for a in self.attachments):
            raise ValueError("attachments: an inline attachment (content_id) needs an html body")
        content_ids = [a.content_id for a in self.attachments if a.content_id is not None]
        if len(set(content_ids)) != len(content_ids):
            raise ValueError("attachments: each content_id may be used once")
        return self

    def encoded_size(self) -> int:
        """About how many bytes the email takes on the wire: bodies as UTF-8 and attachments
        as base64 (4 bytes per 3, plus a line break every 76), headers aside."""
        size = sum(len(body.encode()) for body in (self.text, self.html) if body is not None)
        for attachment in self.attachments:
            encoded = -(-len(attachment.content) // 3) * 4
            size += encoded + -(-encoded // 76) * 2
        return size

    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc and bcc), as bare addresses, each once."""
        return distinct_addresses(
            [addr_spec(mailbox) for mailbox in (*self.to, *self.cc, *self.bcc)]
        )


@functools.lru_cache(maxsize=_ADDRESS_CACHE_SIZE)
def addr_spec(mailbox: str) -> str:
    """The bare address (`a@example.com`) of an already validated mailbox."""
    # Validation writes a mailbox as `a@example.com` or `Name <a@example.com>`, and the address
    # holds no space, quote or angle bracket (quoted local parts are refused): the common forms
    # need no parsing.
    if " " not in mailbox and "<" not in mailbox and '"' not in mailbox:
        return mailbox
    if mailbox.endswith(">"):
        address = mailbox[mailbox.rindex("<") + 1 : -1]
        if " " not in address and '"' not in address:
            return address
    return str(email.policy.default.header_factory("to", mailbox).addresses[0].addr_spec)


def distinct_addresses(addresses: Iterable[str]) -> list[str]:
    """Each bare address once, in first-seen order and spelling.

    An envelope that names an address twice gets two RCPT replies for it (one may accept, the
    next refuse, e.g. 452 past a server's recipient limit) and may deliver two copies. Addresses
    compare with the domain case-insensitive (RFC 5321 2.3.5) and the local part as written:
    RFC 5321 2.4 lets the receiving host tell `Joe@` from `joe@`, and merging two mailboxes
    would lose an email where keeping both costs at worst a second copy.
    """
    seen: dict[str, str] = {}
    for address in addresses:
        local, _, domain = address.rpartition("@")
        seen.setdefault(f"{local}@{domain.lower()}", address)
    return list(seen.values())
