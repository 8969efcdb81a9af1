"""`python -m bench.render`: the worker's CPU per email to decode and render each kind of email.

    python -m bench.render              # 3,000 emails of each kind, best of 3 rounds
    python -m bench.render --emails 500

Each kind is a list of distinct tasks (recipients differ, as in real traffic) encoded as stream
entries; the time is what the worker spends on one from its entry to the bytes it sends:
`decode_entry`, `render` and the message's bytes (for 8BITMIME). It runs on one core, with no
I/O, and is printed in microseconds per email with each kind's ratio to the plain kind.

The same file measures a release from before the one renderer (its `Outgoing` carried an
`EmailMessage` for aiosmtplib to flatten, which is then counted too) when run with that
release's `service` package first on `PYTHONPATH`; kinds it cannot express are skipped.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Mapping
from typing import Any

from service import EmailTask
from service.wire import decode_entry, encode_entry
from service.worker.render import render

SENDER = "Shop <shop@example.com>"
# An HTML alternative of about 2.3 KB in lines of up to ~200 characters, as templates make.
_HTML_ROW = (
    '<tr><td style="padding:8px 16px;font-family:Helvetica,Arial,sans-serif;font-size:14px;'
    'color:#333333;line-height:20px">Item {i}: a short description of what was ordered</td>'
    '<td align="right">12.{i:02d} EUR</td></tr>\n'
)
_HTML = "<html><body><table>\n" + "".join(_HTML_ROW.format(i=i) for i in range(10)) + "</table>"
_TEXT = "Hello,\n\nthank you for your order. It ships tomorrow.\n\nThe shop\n"
_LONG_LINE_HTML = "<p>" + "A sentence of a newsletter that a template wrote on one line. " * 4


def _plain(i: int) -> dict[str, Any]:
    return {"to": f"user{i}@example.com", "subject": f"Your order {i}", "text": _TEXT}


def _text_html(i: int) -> dict[str, Any]:
    return {**_plain(i), "to": f"Person {i} <p{i}@example.com>", "html": _HTML}


def _non_ascii(i: int) -> dict[str, Any]:
    return {
        "to": f"Zoë Çelik {i} <z{i}@example.com>",
        "subject": f"Ihre Bestellung Nr. {i} ist unterwegs — Grüße",
        "text": "Grüße aus Köln,\n\nIhre Bestellung wird morgen verschickt.\n",
        "html": _HTML.replace("Item", "Artikel für Sie"),
    }


def _long_lines(i: int) -> dict[str, Any]:
    return {**_plain(i), "html": _LONG_LINE_HTML}


def _attachment(i: int) -> dict[str, Any]:
    invoice = {"filename": f"invoice-{i}.pdf", "content_type": "application/pdf"}
    return {**_plain(i), "attachments": [{**invoice, "content": bytes(range(256)) * 16}]}


KINDS: Mapping[str, Callable[[int], dict[str, Any]]] = {
    "plain": _plain,
    "text+html": _text_html,
    "non-ascii": _non_ascii,
    "long html lines": _long_lines,
    "small attachment (4 KB)": _attachment,
}


def _entries(kind: Callable[[int], dict[str, Any]], count: int) -> list[dict[bytes, bytes]] | None:
    try:
        tasks = [EmailTask(**kind(i)) for i in range(count)]
    except ValueError:  # a release without this kind of email
        return None
    return [
        {k.encode(): v for k, v in encode_entry(task, f"{i:032x}", 1_700_000_000_000).items()}
        for i, task in enumerate(tasks)
    ]


def _message_bytes(outgoing: Any) -> bytes:
    if hasattr(outgoing, "data"):
        data: bytes = outgoing.data(eightbit=True)
        return data
    from aiosmtplib.email import flatten_message  # noqa: PLC0415 - the release before only

    content = outgoing.content
    return content if isinstance(content, bytes) else flatten_message(content, utf8=False)


def measure(entries: list[dict[bytes, bytes]], rounds: int) -> float:
    """The best round's CPU time per email, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        for fields in entries:
            _message_bytes(render(decode_entry(fields), default_sender=SENDER))
        best = min(best, time.process_time() - started)
    return best / len(entries) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, float | None] = {}
    for name, kind in KINDS.items():
        entries = _entries(kind, args.emails)
        results[name] = None if entries is None else measure(entries, args.rounds)
    print_kinds(results)


def print_kinds(results: Mapping[str, float | None]) -> None:
    """µs per email for each kind, and as a multiple of the plain kind's ("n/a": not run)."""
    plain = results["plain"] or 1.0
    print(f"{'kind':<26}{'µs/email':>10}{'vs plain':>9}")
    for name, micros in results.items():
        if micros is None:
            print(f"{name:<26}{'n/a':>10}")
        else:
            print(f"{name:<26}{micros:>10.1f}{micros / plain:>9.2f}")


if __name__ == "__main__":
    main()
