"""The Overview's charts as SVG geometry, computed here so the page needs no script (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Chart", "chart"]


@dataclass(frozen=True, slots=True)
class Chart:
    """One line per series, as SVG polyline points, on a `width` x `height` canvas."""

    width: int
    height: int
    top: float  # the value at the top edge
    lines: tuple[str, ...]


def chart(
    series: Sequence[Sequence[float | None]], *, width: int = 600, height: int = 120
) -> Chart:
    """Scale `series` (equal lengths; None: no value, the line breaks there as a gap of zero)
    to a shared axis from 0 to the largest value."""
    values = [v for line in series for v in line if v is not None]
    top = max(values, default=0.0) or 1.0
    lines = []
    for line in series:
        step = width / max(len(line) - 1, 1)
        points = (
            f"{i * step:.1f},{height - (value or 0.0) / top * height:.1f}"
            for i, value in enumerate(line)
        )
        lines.append(" ".join(points))
    return Chart(width=width, height=height, top=top, lines=tuple(lines))
