"""The dashboard's pure rules as tables: authentication, CSRF, dead-letter filters, chart
geometry, and the settings that decide who may reach it."""

from __future__ import annotations

import base64

import orjson
import pytest
from pydantic import SecretStr

from service.admin.queue import DeadLetter
from service.dashboard import security
from service.dashboard.charts import chart
from service.dashboard.filters import DeadFilter
from service.errors import ConfigError
from service.settings import DashboardSettings, load_settings

TOKEN = "0123456789abcdef-token"  # noqa: S105 - a test secret
EVERYWHERE = "0.0.0.0"  # noqa: S104 - a setting under test; nothing binds it


def _basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (None, False),
        ("", False),
        (f"Bearer {TOKEN}", True),
        (f"bearer   {TOKEN}", True),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        ("Bearer ", False),
        (_basic(f"anyone:{TOKEN}"), True),
        (_basic(f":{TOKEN}"), True),
        (_basic(f"{TOKEN}:"), False),  # the token as the user name is not the password
        (_basic(TOKEN), False),  # no colon
        ("Basic !!!not-base64", False),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), False),
        (f"Token {TOKEN}", False),
    ],
)
def test_token_matches(header: str | None, ok: bool) -> None:
    assert security.token_matches(TOKEN, header) is ok


def test_csrf_tokens_belong_to_one_session_and_one_key() -> None:
    key, other_key = security.new_key(), security.new_key()
    session, other = security.new_session(), security.new_session()
    token = security.csrf_token(key, session)
    assert security.csrf_valid(key, session, token)
    assert not security.csrf_valid(key, other, token)
    assert not security.csrf_valid(other_key, session, token)
    assert not security.csrf_valid(key, None, token)
    assert not security.csrf_valid(key, session, None)
    assert not security.csrf_valid(key, session, "")
    assert not security.csrf_valid(key, session, token.upper())


def test_the_policy_allows_no_inline_script_or_style() -> None:
    policy = security.SECURITY_HEADERS["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy
    assert "'unsafe-eval'" not in policy
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "frame-ancestors 'none'", "form-action 'self'"):  # fmt: skip
        assert directive in policy


def _letter(reason: str = "", to: object = "a@example.com", tags: object = None) -> DeadLetter:
    task: dict[str, object] = {"to": to, "subject": "s", "text": "t"}
    if tags is not None:
        task["tags"] = tags
    return DeadLetter("1-0", {"dead_reason": reason, "task": orjson.dumps(task).decode()})


@pytest.mark.parametrize(
    ("wanted", "letter", "passes"),
    [
        (DeadFilter(), _letter(), True),
        (DeadFilter(reason="full"), _letter("552 Mailbox FULL"), True),
        (DeadFilter(reason="full"), _letter("550 no such user"), False),
        (DeadFilter(domain="example.com"), _letter(to=["x@Example.COM"]), True),
        (DeadFilter(domain="example.com"), _letter(to="Name <x@example.com>"), True),
        (DeadFilter(domain="example.com"), _letter(to="x@sub.example.com"), False),
        (DeadFilter(domain="example.com"), _letter(to="x@notexample.com"), False),
        (DeadFilter(tag="welcome"), _letter(tags=["Welcome", "user:1"]), True),
        (DeadFilter(tag="welcome"), _letter(tags=["welcomes"]), False),
        (DeadFilter(tag="welcome"), _letter(), False),
        (DeadFilter(tag="x"), _letter(tags="not-a-list-but-x"), False),
        (DeadFilter(reason="550", tag="a"), _letter("550", tags=["a"]), True),
        (DeadFilter(reason="550", tag="a"), _letter("551", tags=["a"]), False),
    ],
)
def test_dead_filter(wanted: DeadFilter, letter: DeadLetter, passes: bool) -> None:
    assert wanted(letter) is passes


def test_dead_filter_from_a_query() -> None:
    wanted = DeadFilter.from_query({"reason": "  550 ", "domain": "@gmail.com", "tag": "x" * 500})
    assert (wanted.reason, wanted.domain, len(wanted.tag)) == ("550", "gmail.com", 200)
    assert wanted.as_query() == "reason=550&domain=gmail.com&tag=" + "x" * 200
    assert DeadFilter.from_query({}).empty
    assert DeadFilter(tag="a&b=c").as_query() == "tag=a%26b%3Dc"


@pytest.mark.parametrize(
    ("series", "top", "lines"),
    [
        ([[0, 0]], 1.0, ("0.0,10.0 10.0,10.0",)),
        ([[1, 2]], 2.0, ("0.0,5.0 10.0,0.0",)),
        (
            [[4, None, 2], [1, 0, 0]],
            4.0,
            ("0.0,0.0 5.0,10.0 10.0,5.0", "0.0,7.5 5.0,10.0 10.0,10.0"),
        ),
        ([[3]], 3.0, ("0.0,0.0",)),
        ([[]], 1.0, ("",)),
    ],
)
def test_chart_scales_every_series_to_one_axis(
    series: list[list[float | None]], top: float, lines: tuple[str, ...]
) -> None:
    drawn = chart(series, width=10, height=10)
    assert (drawn.top, drawn.lines) == (top, lines)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DASHBOARD_HOST": EVERYWHERE}, "DASHBOARD_TOKEN"),
        ({"DASHBOARD_HOST": "192.168.1.5", "DASHBOARD_TOKEN": ""}, "DASHBOARD_TOKEN"),
        ({"DASHBOARD_TOKEN": "short"}, "DASHBOARD_TOKEN"),
        ({"DASHBOARD_PORT": "0"}, "DASHBOARD_PORT"),
        ({"DASHBOARD_PORT": "http"}, "DASHBOARD_PORT"),
        ({"DASHBOARD_HOST": "127.0.0.1:8000"}, "DASHBOARD_HOST"),
        ({"DASHBOARD_READ_ONLY": "perhaps"}, "DASHBOARD_READ_ONLY"),
    ],
)
def test_bad_dashboard_settings_name_the_variable(
    env: dict[str, str], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(DashboardSettings)
    assert raised.value.variable == variable
    assert "0123456789" not in str(raised.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHBOARD_HOST", host)
    assert load_settings(DashboardSettings).dashboard_token is None


def test_the_token_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHBOARD_HOST", EVERYWHERE)
    monkeypatch.setenv("DASHBOARD_TOKEN", TOKEN)
    settings = load_settings(DashboardSettings)
    assert settings.dashboard_token == SecretStr(TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8025", True),
        ("127.0.0.1", True),
        ("localhost:8025", True),
        ("LOCALHOST", True),
        ("[::1]:8025", True),
        ("127.1.2.3:80", True),
        ("attacker.example:8025", False),
        ("localhost.attacker.example", False),
        ("10.0.0.1:8025", False),
        ("[::1", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_host(host: str | None, loopback: bool) -> None:
    assert security.loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        (None, "127.0.0.1:8025", True),
        ("http://127.0.0.1:8025", "127.0.0.1:8025", True),
        ("https://dash.example", "dash.example", True),
        ("http://attacker.example", "127.0.0.1:8025", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8025", False),
        ("null", "127.0.0.1:8025", False),  # a data: URL or sandboxed frame
        ("http://127.0.0.1:8025", None, False),
    ],
)
def test_same_origin(origin: str | None, host: str | None, same: bool) -> None:
    assert security.same_origin(origin, host) is same
