"""Rates as people write them, and the drain forecast, as tables."""

from __future__ import annotations

import pytest

from service.rates import drain_forecast_s, parse_rate


@pytest.mark.parametrize(
    ("text", "per_second", "shown"),
    [
        ("14/s", 14.0, "14/s"),
        ("600/min", 10.0, "600/min"),
        (" 1.5 / sec ", 1.5, "1.5/sec"),
        ("3600/h", 1.0, "3600/h"),
        ("86400/day", 1.0, "86400/day"),
        ("1/d", 1 / 86_400, "1/d"),
        ("50/S", 50.0, "50/s"),
    ],
)
def test_parse_rate(text: str, per_second: float, shown: str) -> None:
    rate = parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert str(rate) == shown


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("14", "is not a rate"),
        ("14/week", "is not a rate"),
        ("-1/s", "is not a rate"),
        ("fast", "is not a rate"),
        ("0/s", "outside"),
        ("1/min x", "is not a rate"),
        ("1000000/s", "outside"),
    ],
)
def test_parse_rate_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_rate(text)


@pytest.mark.parametrize(
    ("backlog", "per_second", "quota", "used", "window_s", "seconds"),
    [
        (0, 14.0, None, 0, 86_400.0, 0.0),
        (1400, 14.0, None, 0, 86_400.0, 100.0),
        (1400, 14.0, 50_000, 0, 86_400.0, 100.0),  # the quota does not bind
        (1400, 14.0, 2000, 1000, 86_400.0, 86_400.0),  # 1000 now, the rest next window
        (5000, 14.0, 2000, 2000, 86_400.0, 3 * 86_400.0),
        (100, 1.0, 10, 0, 30.0, 270.0),  # 9 more windows of 30 s
        (100, 1.0, 50, 0, 30.0, 100.0),  # the rate binds: 100 s > 1 window
    ],
)
def test_drain_forecast(
    *,
    backlog: int,
    per_second: float,
    quota: int | None,
    used: int,
    window_s: float,
    seconds: float,
) -> None:
    forecast = drain_forecast_s(
        backlog, per_second=per_second, quota=quota, quota_used=used, window_s=window_s
    )
    assert forecast == pytest.approx(seconds)
