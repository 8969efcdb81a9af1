"""What users send: the kinds of email in the realistic mix, each as a task and as plain fields
for the peer (which builds its own `EmailMessage` from them).

- `plain`: a short plain-text email (a sign-in code, a notification): 40% of the mix;
- `html`: ASCII text with a ~2.3 KB HTML alternative whose lines are long, as templates write
  them: 30%;
- `intl`: the same with non-ASCII display names, subject and bodies: 30%;
- `attachment`: a small attachment, once the task model has attachments (`ATTACHMENT`: None
  until then; the mix leaves it out and the table says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from service import EmailTask

from .workload import MAIL_FROM

__all__ = ["ATTACHMENT", "KINDS", "MIX", "Email", "emails"]


@dataclass(frozen=True, slots=True)
class Email:
    """One email's fields: what the worker's task and the peer's message are built from."""

    to: str
    subject: str
    text: str
    html: str | None = None

    def task(self) -> EmailTask:
        """The task our producer enqueues (the worker's default sender is `MAIL_FROM`)."""
        return EmailTask(to=self.to, subject=self.subject, text=self.text, html=self.html)

    def peer_fields(self) -> dict[str, str | None]:
        """The peer task's arguments."""
        return {
            "sender": MAIL_FROM,
            "to": self.to,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
        }


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


KINDS: Final[dict[str, Callable[[int], Email]]] = {"plain": _plain, "html": _rich, "intl": _intl}
# Once tasks carry attachments: a kind with a small one (e.g. a 20 KB PDF invoice) goes here
# and into KINDS, and the peer's task attaches the same bytes.
ATTACHMENT: Final[Callable[[int], Email] | None] = None
# The realistic mix: out of every ten emails, four plain, three html, three intl.
MIX: Final = ("plain", "html", "intl", "plain", "html", "intl", "plain", "html", "intl", "plain")


def emails(workload: str, count: int) -> list[Email]:
    """`count` emails of one kind, or of the mix (`"mix"`, interleaved)."""
    if workload == "mix":
        return [KINDS[MIX[i % len(MIX)]](i) for i in range(count)]
    return [KINDS[workload](i) for i in range(count)]
