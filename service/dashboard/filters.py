"""Which dead letters a person asked to see: reason, recipient domain and tag (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from ..admin.queue import DeadLetter

__all__ = ["MAX_FILTER_CHARS", "DeadFilter"]

# Longer filter values are cut: a filter is typed by a person, not pasted from a letter.
MAX_FILTER_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Dead letters whose reason contains `reason`, that were for a recipient at `domain`, and
    that carry `tag` (each case-insensitive; an empty one takes every letter)."""

    reason: str = ""
    domain: str = ""
    tag: str = ""

    @staticmethod
    def from_query(query: Mapping[str, str]) -> DeadFilter:
        """The filter a request's query (or form) names."""

        def value(name: str) -> str:
            return query.get(name, "").strip()[:MAX_FILTER_CHARS]

        return DeadFilter(
            reason=value("reason"), domain=value("domain").lstrip("@"), tag=value("tag")
        )

    @property
    def empty(self) -> bool:
        """Whether it takes every letter."""
        return not (self.reason or self.domain or self.tag)

    def as_query(self) -> str:
        """The filter as a query string (without '?'), empty values left out."""
        pairs = {"reason": self.reason, "domain": self.domain, "tag": self.tag}
        return urlencode({k: v for k, v in pairs.items() if v})

    def __call__(self, letter: DeadLetter) -> bool:
        """Whether `letter` passes."""
        if self.reason and self.reason.casefold() not in letter.reason.casefold():
            return False
        if self.domain:
            domain = "@" + self.domain.casefold()
            if not any(_addr(a).endswith(domain) for a in letter.recipients):
                return False
        if self.tag:
            tag = self.tag.casefold()
            return any(t.casefold() == tag for t in letter.tags)
        return True


def _addr(address: str) -> str:
    """The address part of `Name <a@b>` or `a@b`, folded."""
    start, end = address.rfind("<"), address.rfind(">")
    if 0 <= start < end:
        address = address[start + 1 : end]
    return address.strip().casefold()
