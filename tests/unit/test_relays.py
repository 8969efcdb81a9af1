"""Choosing a relay, as tables: the order an email tries them, the capacity, the names noted."""

from __future__ import annotations

import pytest

from service.store import SettleWrite, StatusNote
from service.worker.outcome import Decision
from service.worker.relays import (
    RelayView,
    decision_via,
    may_try_next,
    pool_capacity,
    sender_domain,
    try_order,
    write_via,
)

UP, DOWN = True, False


def _relays(*specs: tuple[bool, int, tuple[str, ...]]) -> list[RelayView]:
    return [RelayView(up, weight, domains) for up, weight, domains in specs]


@pytest.mark.parametrize(
    ("relays", "mode", "domain", "pick", "order"),
    [
        # failover: the configured order, the down ones left out
        (_relays((UP, 1, ()), (UP, 1, ())), "failover", "x.com", 0.9, [0, 1]),
        (_relays((DOWN, 1, ()), (UP, 1, ())), "failover", "x.com", 0.0, [1]),
        (_relays((DOWN, 1, ()), (DOWN, 1, ())), "failover", "x.com", 0.0, []),
        # routing by sender domain: a relay limited to some domains serves only those
        (_relays((UP, 1, ("a.com",)), (UP, 1, ())), "failover", "a.com", 0.0, [0, 1]),
        (_relays((UP, 1, ("a.com",)), (UP, 1, ())), "failover", "b.com", 0.0, [1]),
        (_relays((UP, 1, ("a.com",)), (DOWN, 1, ())), "failover", "b.com", 0.0, []),
        (_relays((UP, 1, ("a.com",))), "failover", "", 0.0, []),  # the null sender <>
        # weighted: the draw picks the first, the others follow as fallbacks in order
        (_relays((UP, 3, ()), (UP, 1, ())), "weighted", "x.com", 0.0, [0, 1]),
        (_relays((UP, 3, ()), (UP, 1, ())), "weighted", "x.com", 0.74, [0, 1]),
        (_relays((UP, 3, ()), (UP, 1, ())), "weighted", "x.com", 0.75, [1, 0]),
        (_relays((UP, 3, ()), (UP, 1, ())), "weighted", "x.com", 0.999, [1, 0]),
        (_relays((UP, 1, ()), (UP, 1, ()), (UP, 2, ())), "weighted", "x.com", 0.6, [2, 0, 1]),
        (_relays((UP, 3, ()), (UP, 1, ())), "weighted", "x.com", 1.0, [0, 1]),
        # weighted over the usable ones only: a down relay's weight goes to the others
        (_relays((DOWN, 3, ()), (UP, 1, ()), (UP, 1, ())), "weighted", "x.com", 0.4, [1, 2]),
        (_relays((DOWN, 3, ()), (UP, 1, ()), (UP, 1, ())), "weighted", "x.com", 0.6, [2, 1]),
        (_relays((UP, 3, ("a.com",)), (UP, 1, ())), "weighted", "b.com", 0.0, [1]),
    ],
)
def test_try_order(
    relays: list[RelayView], mode: str, domain: str, pick: float, order: list[int]
) -> None:
    assert try_order(relays, mode=mode, domain=domain, pick=pick) == order


def test_weighted_draw_follows_the_weights() -> None:
    relays = _relays((UP, 3, ()), (UP, 1, ()))
    firsts = [try_order(relays, mode="weighted", domain="x", pick=i / 1000)[0] for i in range(1000)]
    assert firsts.count(0) == 750


@pytest.mark.parametrize(
    ("mode", "capacities", "capacity"),
    [
        ("failover", [10, 5], 10),
        ("failover", [None, 5], 5),  # the primary is down: the backup carries everything
        ("failover", [3, 10], 3),  # the primary holds at 3 connections: so does the worker
        ("weighted", [10, 5], 15),
        ("weighted", [None, 5], 5),
        ("failover", [None, None], 1),  # all down: a send fails at once and the breaker pauses
        ("weighted", [None, None], 1),
    ],
)
def test_pool_capacity(mode: str, capacities: list[int | None], capacity: int) -> None:
    assert pool_capacity(mode, capacities) == capacity


@pytest.mark.parametrize(
    ("mail_from", "domain"),
    [
        ("a@Example.COM", "example.com"),
        ('"x@y"@b.org', "b.org"),
        ("", ""),
        ("bounce@xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_sender_domain(mail_from: str, domain: str) -> None:
    assert sender_domain(mail_from) == domain


def test_reasons_name_the_relay() -> None:
    decision = Decision(accepted=0, dead=("a@x",), reason="SMTP 550", dead_reason="SMTP 550")
    named = decision_via(decision, "backup")
    assert (named.reason, named.dead_reason) == ("SMTP 550 (relay backup)",) * 2
    assert decision_via(Decision(accepted=1), "backup") == Decision(accepted=1)


@pytest.mark.parametrize(
    ("status", "noted"),
    [
        (StatusNote("sent", attempts=0), StatusNote("sent", attempts=0, text="relay b")),
        (StatusNote("sent", text="SMTP 250 ok"), StatusNote("sent", text="SMTP 250 ok (relay b)")),
        (StatusNote("retrying", text="x (relay b)"), StatusNote("retrying", text="x (relay b)")),
        (None, None),
    ],
)
def test_a_sent_status_names_the_relay(status: StatusNote | None, noted: StatusNote | None) -> None:
    assert write_via(SettleWrite("1-0", task_id="t", status=status), "b").status == noted


@pytest.mark.parametrize(
    ("elapsed_s", "timeout_s", "reclaim_s", "tries"),
    [
        (0.01, 30, 60, True),  # the first relay refused the connection: the next one at once
        (29.9, 30, 60, True),
        (30.0, 30, 60, False),  # it hung for the whole timeout: a send now could be reclaimed
        (2.0, 2, 3, False),
        (0.5, 2, 3, True),
    ],
)
def test_may_try_next(elapsed_s: float, timeout_s: float, reclaim_s: float, tries: bool) -> None:
    assert may_try_next(elapsed_s, timeout_s=timeout_s, reclaim_s=reclaim_s) is tries
