"""Plain-text tables for people; `--json` output is for scripts (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, numbers right-aligned, None shown as "-"."""
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
    return str(value)


def _line(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    padded = [
        cell.rjust(width) if align else cell.ljust(width)
        for cell, width, align in zip(cells, widths, right, strict=True)
    ]
    return "  ".join(padded).rstrip()
