"""The short way to validate an address (`_is_simple_mailbox`) against the full parse.

The short way may only accept what the full parse (the email library's header parser, then
email_validator) accepts and returns unchanged: a table of the shapes that matter, then
generated addresses near that shape, each compared with the full parse.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.task import _is_simple_mailbox, _parse_address_fully


def _full(value: str) -> str | None:
    try:
        return _parse_address_fully(value)
    except ValueError:
        return None


@pytest.mark.parametrize(
    ("value", "simple"),
    [
        ("user1@example.com", True),
        ("first.last+tag@mail.example.co.uk", True),
        ("bounce+user=example.com@example.com", True),
        ("Person 3 <p3@example.com>", True),
        ("Zoë Çelik 3 <z3@example.com>", True),
        ("O'Brien <ob@example.com>", True),
        # The full parse rewrites or refuses these: the short way must leave them to it.
        ("Postmaster@example.com", False),  # lower-cased (RFC 2142 names)
        ("a@Example.com", False),  # domain lower-cased
        ("a@bücher.example", False),  # IDNA
        ("a@localhost", False),  # refused: a special-use name
        ("a@x-.example.com", False),  # refused: a hyphen next to a period
        ("a@example.123", True),  # accepted by email_validator as it stands
        ("a@-x.example.com", False),  # refused: label starts with a hyphen
        ("a@x..example.com", False),
        ("a.@example.com", False),
        (".a@example.com", False),
        ("a..b@example.com", False),
        ("J. Doe <j@example.com>", False),  # quoted by the full parse
        ('"Doe, J" <j@example.com>', False),
        ("Two  Spaces <s@example.com>", False),
        (" Lead <l@example.com>", False),
        ("=?utf-8?q?x?= <e@example.com>", False),  # an encoded word, decoded by the parser
        ("Name<n@example.com>", False),
        ("<n@example.com>", False),
        ("Name <n@example.com", False),
        ("n@example.com>", False),
        ("a\r\nBcc: x@example.com", False),
        ("jörg@example.com", False),
        ("x" * 250 + "@example.com", False),  # too long
    ],
)
def test_the_short_way_takes_only_what_the_full_parse_keeps(value: str, simple: bool) -> None:
    assert _is_simple_mailbox(value) is simple
    if simple:
        assert _full(value) == value


_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_NEAR = _ATEXT + '.@<> "(),:;[]\\\t\r\nÉéßçΩЖ中\u0301\u2028\x00'
_words = st.text(alphabet=_ATEXT + 'éÇЖ中_\u0301"().,', min_size=1, max_size=8)
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=10)
_labels = st.text(alphabet="abcxyz019-", min_size=1, max_size=6) | st.sampled_from(
    ["example", "com", "co", "uk", "Example", "123", "xn--bcher-kva"]
)


@st.composite
def _near_mailboxes(draw: st.DrawFn) -> str:
    local = ".".join(draw(st.lists(_atoms, min_size=1, max_size=3)))
    local = draw(st.sampled_from([local, local.title(), "postmaster", "Info", local + "."]))
    domain = ".".join(draw(st.lists(_labels, min_size=1, max_size=4)))
    address = f"{local}@{domain}"
    names = draw(st.lists(_words, max_size=3))
    if not names:
        return address
    separator = draw(st.sampled_from([" ", " ", "  ", "\t"]))
    return f"{separator.join(names)} <{address}>"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_near_mailboxes() | st.text(alphabet=_NEAR, max_size=40))
def test_the_short_way_never_differs_from_the_full_parse(value: str) -> None:
    if _is_simple_mailbox(value):
        assert _full(value) == value
