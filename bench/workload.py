"""The email every measurement sends: about one kilobyte on the wire, plain 7-bit text."""

from __future__ import annotations

import email.policy
import uuid
from email.message import EmailMessage
from typing import Final

from service import EmailTask

__all__ = [
    "MAIL_ADDRESS",
    "MAIL_FROM",
    "RECIPIENT",
    "make_task",
    "make_tasks",
    "prebuilt_message",
    "xadd_fields",
]

MAIL_FROM: Final = "Bench <bench@example.com>"
MAIL_ADDRESS: Final = "bench@example.com"  # MAIL_FROM's address, as the worker sends it
RECIPIENT: Final = "rcpt@example.com"
# 11 lines of 68 characters: short lines keep the body 7-bit (no quoted-printable).
_BODY: Final = "\n".join(
    f"{i:02d} " + "lorem ipsum dolor sit amet " * 2 + "consectetur" for i in range(11)
)


def make_task(index: int = 0) -> EmailTask:
    """One benchmark email; the subject varies so no two entries are identical."""
    return EmailTask(to=RECIPIENT, subject=f"Benchmark email {index}", text=_BODY)


def make_tasks(count: int) -> list[EmailTask]:
    """`count` benchmark emails, validated up front (building them is not what we time)."""
    return [make_task(i) for i in range(count)]


def prebuilt_message() -> bytes:
    """The bytes of one benchmark email, headers as the worker would write them."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = MAIL_FROM
    message["To"] = RECIPIENT
    message["Subject"] = "Benchmark email 0"
    message["Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@example.com>"
    message.set_content(_BODY)
    return message.as_bytes()


def xadd_fields() -> dict[str, bytes]:
    """Stream entry fields of the same shape and size as what a producer writes."""
    return {
        "v": b"1",
        "id": uuid.uuid4().hex.encode(),
        "at": b"1767225600000",
        "task": make_task().model_dump_json(exclude_defaults=True).encode(),
    }
