"""What users send: the kinds of email in the realistic mix, each as a task and as plain fields
for the peer (which builds its own `EmailMessage` from them).

- `plain`: a short plain-text email (a sign-in code, a notification): 40% of the mix;
- `html`: ASCII text with a ~2.3 KB HTML alternative whose lines are long, as templates write
  them: 30%;
- `intl`: the same with non-ASCII display names, subject and bodies: 30%;
- `attachment`: the html kind with a 20 KB PDF invoice attached, measured apart (the mix leaves
  it out: most transactional email carries none).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from service import EmailTask
from service.task import Attachment

from .workload import MAIL_FROM

__all__ = ["KINDS", "MIX", "Email", "emails"]


@dataclass(frozen=True, slots=True)
class Email:
    """One email's fields: what the worker's task and the peer's message are built from."""

    to: str
    subject: str
    text: str
    html: str | None = None
    pdf: bytes | None = None  # an attached invoice, `invoice.pdf`

    def task(self) -> EmailTask:
        """The task our producer enqueues (the worker's default sender is `MAIL_FROM`)."""
        files = [] if self.pdf is None else [_invoice(self.pdf)]
        return EmailTask(
            to=self.to, subject=self.subject, text=self.text, html=self.html, attachments=files
        )

    def peer_fields(self) -> dict[str, str | None]:
        """The peer task's arguments (JSON: the attachment as base64)."""
        return {
            "sender": MAIL_FROM,
            "to": self.to,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "pdf": None if self.pdf is None else base64.b64encode(self.pdf).decode(),
        }


def _invoice(pdf: bytes) -> Attachment:
    return Attachment(filename="invoice.pdf", content=pdf, content_type="application/pdf")


def _plain(i: int) -> Email:
    return Email(
        to=f"user{i}@example.com",
        subject=f"Your sign-in code: {100000 + i}",
        text=f"Your sign-in code is {100000 + i}.\nIt expires in 10 minutes.\n",
    )


_ROW: Final = (
    '<tr><td style="padding:8px 16px;font-family:Helvetica,Arial,sans-serif;font-size:14px;'
    'color:#333333;border-bottom:1px solid #eeeeee">{item}</td><td style="padding:8px 16px;'
    'text-align:right;font-family:Helvetica,Arial,sans-serif;font-size:14px">{price}</td></tr>'
)


def _html(name: str, greeting: str, items: list[str]) -> str:
    rows = "\n".join(
        _ROW.format(item=item, price=f"{9 + n}.90 EUR") for n, item in enumerate(items)
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Order</title></head>'
        '<body style="margin:0;padding:0;background:#f4f4f4">\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
        'style="max-width:600px;margin:0 auto;background:#ffffff">\n'
        f'<tr><td style="padding:24px 16px;font-family:Helvetica,Arial,sans-serif;font-size:18px">'
        f"{greeting} {name},</td></tr>\n{rows}\n"
        '<tr><td colspan="2" style="padding:24px 16px;font-family:Helvetica,Arial,sans-serif;'
        'font-size:12px;color:#999999">You receive this email because you ordered from our shop. '
        'Questions? Reply to this email or visit <a href="https://shop.example.com/help?utm_source'
        '=email&amp;utm_medium=transactional&amp;utm_campaign=order">our help pages</a>.</td></tr>'
        "\n</table></body></html>\n"
    )


_ITEMS: Final = [
    "Coffee beans, 1 kg",
    "Ceramic mug",
    "Paper filters (100)",
    "Milk frother",
    "Descaler",
    "Gift card",
]
_ITEMS_INTL: Final = [
    "Kaffeebohnen, 1 kg",
    "Keramiktasse „Grüße“",
    "Filtertüten (100)",
    "Milchaufschäumer",
    "Entkalker für Maschinen",
    "Crème brûlée Geschenkkarte",
]


def _text(name: str, greeting: str, items: list[str]) -> str:
    lines = [f"{greeting} {name},", "", "Thank you for your order:", ""]
    lines += [f"- {item}" for item in items]
    lines += ["", "We will let you know when it ships.", "", "-- ", "The shop team"]
    return "\n".join(lines) + "\n"


def _rich(i: int) -> Email:
    name = f"Alex Smith {i}"
    return Email(
        to=f"{name} <alex{i}@example.com>",
        subject=f"Your order #{20000 + i} is confirmed",
        text=_text(name, "Hello", _ITEMS),
        html=_html(name, "Hello", _ITEMS),
    )


def _intl(i: int) -> Email:
    name = f"Zoë Çelik-Müller {i}"
    return Email(
        to=f"{name} <zoe{i}@example.com>",
        subject=f"Ihre Bestellung Nr. {20000 + i} ist bestätigt — vielen Dank",
        text=_text(name, "Grüß Gott", _ITEMS_INTL),
        html=_html(name, "Grüß Gott", _ITEMS_INTL),
    )


# A compressed PDF's bytes look random: base64 and line splitting get no shortcut.
_PDF: Final = b"%PDF-1.4\n" + random.Random(20).randbytes(20 * 1024)  # noqa: S311 - not a secret


def _attached(i: int) -> Email:
    email = _rich(i)
    return Email(email.to, email.subject, email.text, email.html, pdf=_PDF)


KINDS: Final[dict[str, Callable[[int], Email]]] = {
    "plain": _plain,
    "html": _rich,
    "intl": _intl,
    "attachment": _attached,
}
# The realistic mix: out of every ten emails, four plain, three html, three intl.
MIX: Final = ("plain", "html", "intl", "plain", "html", "intl", "plain", "html", "intl", "plain")


def emails(workload: str, count: int) -> list[Email]:
    """`count` emails of one kind, or of the mix (`"mix"`, interleaved)."""
    if workload == "mix":
        return [KINDS[MIX[i % len(MIX)]](i) for i in range(count)]
    return [KINDS[workload](i) for i in range(count)]
