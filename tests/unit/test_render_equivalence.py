"""The renderer proven by equivalence: for generated tasks, the standard library's parser
(policy=default) reads back exactly the headers, addresses, parts, bodies and attachment bytes
that were enqueued, from the 8-bit and the 7-bit form alike, and every line is within RFC 5322's
998 octets."""

from __future__ import annotations

import email
import email.policy
import re
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import EmailTask
from service.task import Attachment
from service.wire import QueuedTask
from service.worker.render import _name_and_address, render
from service.worker.transaction import dot_stuffed

TASK_ID = "0123456789abcdef0123456789abcdef"
SENDER = "Worker <worker@example.com>"

# Header text as validation lets it through: no control characters, no encoded words.
_header_chars = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"))
header_text = st.one_of(
    st.text(_header_chars, max_size=120),
    st.text(st.sampled_from("ab é  "), max_size=400),  # spaces, runs and long words
    st.builds(lambda word: "x" * word, st.integers(70, 990)),
).filter(lambda value: "=?" not in value)
# Bodies: anything, line ends of every kind, control characters, long lines, empty.
body = st.one_of(
    st.text(max_size=300),
    st.text(st.sampled_from("a é\r\n\t\x00\x1b.="), max_size=300),
    st.builds(lambda n, c: c * n + "\n" + c * 3, st.integers(990, 1100), st.sampled_from("xé")),
    st.just(""),
)
_local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True).filter(
    lambda local: ".." not in local and not local.endswith(".")
)
mailbox = st.builds(
    lambda name, local: str(Address(display_name=name.strip(), addr_spec=f"{local}@example.com")),
    st.text(_header_chars, max_size=40).filter(lambda name: "=?" not in name),
    _local,
)
filename = st.text(_header_chars, min_size=1, max_size=120).filter(
    lambda name: name.strip() and "/" not in name and "\\" not in name
)
attachment = st.builds(
    Attachment,
    filename=filename,
    content=st.binary(max_size=600),
    content_type=st.sampled_from(["application/pdf", "image/png", "text/plain", "text/html"]),
    content_id=st.one_of(st.none(), st.from_regex(r"[a-z0-9]{1,20}@example\.com", fullmatch=True)),
)


@st.composite
def tasks(draw: st.DrawFn) -> EmailTask:
    text, html = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    attachments = draw(st.lists(attachment, max_size=3))
    if not html:
        attachments = [a.model_copy(update={"content_id": None}) for a in attachments]
    seen: set[str] = set()
    unique = []
    for item in attachments:  # a content_id once per email
        kept = item if item.content_id not in seen else item.model_copy(update={"content_id": None})
        if kept.content_id is not None:
            seen.add(kept.content_id)
        unique.append(kept)
    fields: dict[str, Any] = {
        "to": draw(st.lists(mailbox, min_size=1, max_size=4)),
        "cc": draw(st.lists(mailbox, max_size=2)),
        "reply_to": draw(st.lists(mailbox, max_size=2)),
        "subject": draw(header_text),
        "text": draw(body) if text else None,
        "html": draw(body) if html else None,
        "headers": draw(st.dictionaries(st.sampled_from(["X-A", "X-Campaign-Name"]), header_text)),
        "attachments": unique,
    }
    if draw(st.booleans()):
        fields["sender"] = draw(mailbox)
    return EmailTask(**fields)


def _expected_body(value: str) -> str:
    lines = re.sub(r"\r\n|\r", "\n", value)
    return lines if lines.endswith("\n") else lines + "\n"


def _addresses(mailboxes: list[str]) -> list[tuple[str, str]]:
    parsed = [email.policy.default.header_factory("to", m).addresses[0] for m in mailboxes]
    return [(a.display_name, a.addr_spec) for a in parsed]


def _leaves(task: EmailTask) -> list[tuple[str, Any]]:
    """The parts, in the order the renderer writes them, as (content type, content)."""
    leaves: list[tuple[str, Any]] = []
    if task.text is not None:
        leaves.append(("text/plain", _expected_body(task.text)))
    if task.html is not None:
        leaves.append(("text/html", _expected_body(task.html)))
        leaves += [
            (a.content_type, ("inline", a.filename, f"<{a.content_id}>", a.content))
            for a in task.attachments
            if a.content_id is not None
        ]
    leaves += [
        (a.content_type, ("attachment", a.filename, None, a.content))
        for a in task.attachments
        if a.content_id is None
    ]
    return leaves


def _read_back(message: EmailMessage) -> list[tuple[str, Any]]:
    leaves: list[tuple[str, Any]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        if disposition is None:
            content = part.get_content()
            assert isinstance(content, str)
            leaves.append((part.get_content_type(), content.replace("\r\n", "\n")))
        else:
            content_id = part["Content-ID"]
            data = part.get_payload(decode=True)
            leaves.append(
                (
                    part.get_content_type(),
                    (disposition, part.get_filename(), content_id and str(content_id), data),
                )
            )
    return leaves


def _check(task: EmailTask, data: bytes, *, eightbit: bool) -> None:
    lines = data.split(b"\r\n")
    assert lines[-1] == b""  # ends with CRLF
    assert all(len(line) <= 998 for line in lines)
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    if not eightbit:
        assert data.isascii()
    message = email.message_from_bytes(
        data.replace(b"\r\n", b"\n"), _class=EmailMessage, policy=email.policy.default
    )
    assert not [d for part in message.walk() for d in part.defects]
    expected_from = task.sender or SENDER
    assert _addresses([str(message["From"])]) == _addresses([expected_from])
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == _addresses(task.to)
    for name, field in (("Cc", task.cc), ("Reply-To", task.reply_to)):
        if field:
            assert [(a.display_name, a.addr_spec) for a in message[name].addresses] == _addresses(
                field
            )
        else:
            assert message[name] is None
    assert message["Bcc"] is None
    assert str(message["Subject"]) == task.subject
    for name, value in task.headers.items():
        assert message.get_all(name) == [value]
    assert message["Message-ID"] == f"<{TASK_ID}@example.com>"
    assert _read_back(message) == _leaves(task)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks())
def test_the_parser_reads_back_what_was_enqueued(task: EmailTask) -> None:
    out = render(QueuedTask(TASK_ID, 1_700_000_000_000, task), default_sender=SENDER)
    assert not out.smtputf8
    _check(task, out.data(eightbit=True), eightbit=True)
    _check(task, out.data(eightbit=False), eightbit=False)
    for eightbit in (True, False):  # what DATA carries unscanned needs no stuffing
        data = out.data(eightbit=eightbit)
        if out.plain_lines(eightbit=eightbit):
            assert dot_stuffed(data) == data + b".\r\n"


@settings(max_examples=500, deadline=None)
@given(mailbox)
def test_a_mailbox_is_read_as_the_standard_library_reads_it(value: str) -> None:
    normalized = EmailTask(to=value, subject="s", text="t").to[0]
    parsed = email.policy.default.header_factory("to", normalized).addresses[0]
    assert _name_and_address(normalized) == (parsed.display_name, parsed.addr_spec)
