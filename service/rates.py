"""Sending rates as people write them (`14/s`, `600/min`) and the arithmetic on them: pure
functions, tested as tables (`tests/unit/test_rates.py`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["DomainLimit", "Rate", "drain_forecast_s", "parse_domain_limits", "parse_rate"]

_PERIODS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86_400.0,
    "day": 86_400.0,
}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")
# Below one unit a day nothing useful is limited; above this a limit is meaningless here (the
# worker sends a few thousand emails a second at most) and the limiter's arithmetic in
# microseconds would lose precision.
_MIN_PER_SECOND: Final = 1 / 86_400
_MAX_PER_SECOND: Final = 100_000.0
# A DNS name as it appears after the @ of an address (IDNs in their ASCII form), lowercase.
_LABEL: Final = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}")
# Each limited domain is one more field in the limiter's hash and one more lookup per email.
_MAX_DOMAINS: Final = 100


@dataclass(frozen=True, slots=True)
class Rate:
    """A sustained rate: `count` units per `period_s` seconds, as written."""

    count: float
    period_s: float
    text: str

    @property
    def per_second(self) -> float:
        """Units per second."""
        return self.count / self.period_s

    def __str__(self) -> str:
        return self.text


def parse_rate(text: str) -> Rate:
    """`14/s`, `600/min`, `1000/h`, `50000/day`... as a `Rate`; ValueError saying what is wrong."""
    match = _RATE.fullmatch(text.lower())
    if not match or match[2] not in _PERIODS:
        raise ValueError(
            f"{text!r} is not a rate: write a number, '/', and a unit of time "
            "(s, min, h or day), e.g. 14/s or 600/min"
        )
    rate = Rate(float(match[1]), _PERIODS[match[2]], f"{match[1]}/{match[2]}")
    if not _MIN_PER_SECOND <= rate.per_second <= _MAX_PER_SECOND:
        raise ValueError(f"{text!r} is outside 1/day to {_MAX_PER_SECOND:g}/s")
    return rate


@dataclass(frozen=True, slots=True)
class DomainLimit:
    """The rate at which one recipient domain may be sent to."""

    domain: str  # lowercase
    rate: Rate


def parse_domain_limits(text: str) -> tuple[DomainLimit, ...]:
    """`gmail.com=20/min, yahoo.com=5/s` as `DomainLimit`s, in the order written; ValueError
    saying what is wrong (an empty text: none)."""
    limits: dict[str, DomainLimit] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        domain, sep, rate_text = item.partition("=")
        domain = domain.strip().lower()
        if not sep or not _DOMAIN.fullmatch(domain):
            raise ValueError(
                f"{item.strip()!r} is not domain=rate: write e.g. gmail.com=20/min, "
                "entries separated by commas"
            )
        if domain in limits:
            raise ValueError(f"{domain} is limited twice")
        try:
            rate = parse_rate(rate_text)
        except ValueError as exc:
            raise ValueError(f"{domain}: {exc}") from None
        limits[domain] = DomainLimit(domain, rate)
    if len(limits) > _MAX_DOMAINS:
        raise ValueError(f"{len(limits)} domains; at most {_MAX_DOMAINS}")
    return tuple(limits.values())


def drain_forecast_s(
    backlog: int,
    *,
    per_second: float,
    quota: int | None = None,
    quota_used: int = 0,
    window_s: float = 86_400.0,
) -> float:
    """Seconds to send `backlog` units at `per_second`, waiting for the rolling quota's window
    when it binds (assumes sends in the window free up in one block at its end: an upper bound
    of the quota's share)."""
    if backlog <= 0:
        return 0.0
    by_rate = backlog / per_second
    if quota is None:
        return by_rate
    left_now = max(quota - quota_used, 0)
    if backlog <= left_now:
        return by_rate
    windows = math.ceil((backlog - left_now) / quota)
    return max(by_rate, windows * window_s)
