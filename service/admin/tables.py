"""Text for people: aligned tables, and stored text made inert for a terminal (pure functions).

`--json` output is for scripts: JSON escapes control characters itself and keeps values exact.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Final

__all__ = ["printable", "table"]

_NAMED_ESCAPES: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Characters that reorder what a terminal shows ("Trojan Source", CVE-2021-42574): text shown
# in a table could read as something it is not.
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def printable(text: str, *, json: bool = False) -> str:
    """`text` with every character a terminal acts on instead of showing written as an escape.

    Stored fields and SMTP replies come from anyone who can enqueue a task or answer as an SMTP
    server: shown raw, ESC starts sequences that retitle the window, clear the screen or move
    the cursor, CR/LF forge lines, and C1 controls (U+0080 to U+009F) act like ESC on some
    terminals. Those, DEL, line and paragraph separators and bidirectional controls become
    `\\x1b`, `\\n`, `\\u2028`... (a backslash itself is left as it is: the text is for people;
    `--json` is exact). With `json`, every escape is `\\uXXXX`, so that a line of JSON stays
    JSON.
    """
    if text.isprintable():  # the common case; false for every character escaped below
        return text
    return "".join(_escaped(character, json=json) for character in text)


def _escaped(character: str, *, json: bool) -> str:
    code = ord(character)
    control = code < 0x20 or 0x7F <= code <= 0x9F
    if control and not json:
        return _NAMED_ESCAPES.get(character) or f"\\x{code:02x}"
    if control or unicodedata.category(character) in ("Zl", "Zp") or character in _BIDI_CONTROLS:
        return f"\\u{code:04x}"
    return character


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, numbers right-aligned, None shown as "-", text made
    `printable`."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [_is_numeric([row[i] for row in rows]) for i in range(len(headers))]
    lines = [_line(headers, widths, numeric)]
    lines.append("  ".join("-" * width for width in widths))
    lines += [_line(row, widths, numeric) for row in cells]
    return "\n".join(lines) + "\n"


def _is_numeric(column: Sequence[object]) -> bool:
    """Numbers (and blanks) only, at least one number: the column aligns right."""
    numbers = [value for value in column if value is not None]
    return bool(numbers) and all(isinstance(value, int | float) for value in numbers)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return printable(str(value))


def _line(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    padded = [
        cell.rjust(width) if align else cell.ljust(width)
        for cell, width, align in zip(cells, widths, right, strict=True)
    ]
    return "  ".join(padded).rstrip()
