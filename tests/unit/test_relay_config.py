"""The relays file: each mistake refused at start-up in one line naming the field, no secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError
from service.relay_config import load_relays
from service.settings import WorkerSettings, load_settings

EXAMPLE = Path(__file__).parents[2] / "config" / "relays.example.toml"
SECRET = "s3cret-never-shown"  # noqa: S105 - a test value, looked for in the output
_ALL = tuple(name.upper() for name in WorkerSettings.model_fields)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ALL:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    monkeypatch.setenv("MAIL_FROM", "noreply@example.com")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relays.toml"
    path.write_text(text)
    return path


def test_the_example_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTMARK_TOKEN", SECRET)
    relays = load_relays(EXAMPLE)
    assert relays.mode == "failover"
    assert [r.name for r in relays.relay] == ["ses", "postmark", "corporate"]
    assert relays.relay[2].from_domains == ("example.com",)
    assert relays.relay[1].port_or_default == 587
    ses = relays.relay[0]
    assert (ses.rate_limit, ses.rate_burst, ses.daily_quota, ses.overflow) == (
        "14/s",
        14,
        50_000,
        True,
    )
    assert ses.rate is not None
    assert ses.rate.per_second == 14
    assert ses.limited
    assert not relays.relay[1].limited


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "relay: is required but not set"),
        ("relay = []", "relay: Tuple should have at least 1 item"),
        ('mode = "random"\n[[relay]]\nname="a"\nhost="h"', "mode: Input should be 'failover' or"),
        ('[[relay]]\nname="a"\nhost="h"\n[[relay]]\nname="b"\nhost="h"\nport=0', "relay[2].port"),
        ('[[relay]]\nname="a"', "relay[1].host: is required but not set"),
        ('[[relay]]\nname="a b"\nhost="h"', "relay[1].name: String should match pattern"),
        ('[[relay]]\nname="a"\nhost="h:25"', "relay[1].host: must not carry a port (set port)"),
        ('[[relay]]\nname="a"\nhost="h"\nsecurity="ssl"', "relay[1].security"),
        ('[[relay]]\nname="a"\nhost="h"\nweight=0', "relay[1].weight"),
        ('[[relay]]\nname="a"\nhost="h"\nmax_connections=0', "relay[1].max_connections"),
        ('[[relay]]\nname="a"\nhost="h"\nfrom_domains=["a b"]', "relay[1].from_domains[1]"),
        ('[[relay]]\nname="a"\nhost="h"\nhots="x"', "relay[1].hots: is not a known field"),
        (f'[[relay]]\nname="a"\nhost="h"\npassword="{SECRET}"', "username and password go"),
        ('[[relay]]\nname="a"\nhost="h"\nusername="u"\npassword=" "', "password: is empty"),
        (
            f'[[relay]]\nname="a"\nhost="smtp.example.com"\nsecurity="none"\nusername="u"\n'
            f'password="{SECRET}"',
            "relay[1]: security 'none' would send credentials in clear text",
        ),
        ('[[relay]]\nname="a"\nhost="h"\n[[relay]]\nname="a"\nhost="g"', "'a' is used twice"),
        ('[[relay]]\nname="a"\nhost="h"\nrate_limit="14"', "relay[1].rate_limit: '14' is not a"),
        ('[[relay]]\nname="a"\nhost="h"\nrate_limit="1000000/s"', "relay[1].rate_limit: '1000"),
        ('[[relay]]\nname="a"\nhost="h"\nrate_burst=0', "relay[1].rate_burst"),
        ('[[relay]]\nname="a"\nhost="h"\ndaily_quota=0', "relay[1].daily_quota"),
        ('[[relay]]\nname="a"\nhost="h"\ndaily_quota_window_seconds=0', "relay[1].daily_quota_w"),
        ('[[relay]]\nname="a"\nhost="h"\noverflow="maybe"', "relay[1].overflow"),
        ("[[relay]\n", "is not valid TOML"),
        (f'[[relay]]\nname="a"\nhost="h"\nusername="u"\npassword={SECRET}', "is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_relays(_write(tmp_path, text))
    assert caught.value.variable == "SMTP_RELAYS_FILE"
    assert message in caught.value.reason
    assert SECRET not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SMTP_RELAYS_FILE: cannot read .*: No such file"):
        load_relays(tmp_path / "absent.toml")


def test_settings_read_the_file_once_and_never_show_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        f'mode = "weighted"\n[[relay]]\nname="a"\nhost="smtp.a.example"\nusername="u"\n'
        f'password="{SECRET}"\n[[relay]]\nname="b"\nhost="127.0.0.1"\nweight=3\n',
    )
    monkeypatch.setenv("SMTP_RELAYS_FILE", str(path))
    settings = load_settings(WorkerSettings)
    path.unlink()  # built once at start-up: the settings do not read it again
    assert [(r.name, r.weight) for r in settings.relays] == [("a", 1), ("b", 3)]
    assert settings.relay_mode == "weighted"
    assert SECRET not in repr(settings) + repr(settings.relays)


def test_without_a_file_the_smtp_settings_are_the_one_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SMTP_SECURITY", "tls")
    monkeypatch.setenv("SMTP_RELAYS_FILE", "")  # empty: unset
    settings = load_settings(WorkerSettings)
    (relay,) = settings.relays
    assert (relay.name, relay.address, settings.relay_mode) == (
        "smtp",
        "smtp.example.com:465",
        "failover",
    )


@pytest.mark.parametrize("variable", ["SMTP_HOST", "SMTP_PORT", "SMTP_USERNAME"])
def test_smtp_settings_beside_the_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("SMTP_RELAYS_FILE", str(_write(tmp_path, '[[relay]]\nname="a"\nhost="h"')))
    monkeypatch.setenv(variable, "25" if variable == "SMTP_PORT" else "x")
    if variable == "SMTP_USERNAME":
        monkeypatch.setenv("SMTP_PASSWORD", SECRET)
    with pytest.raises(ConfigError) as caught:
        load_settings(WorkerSettings)
    assert caught.value.variable == variable
    assert "SMTP_RELAYS_FILE" in caught.value.reason


def test_a_password_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_A_PASSWORD", SECRET)
    text = '[[relay]]\nname="a"\nhost="h"\nusername="u"\npassword_env="RELAY_A_PASSWORD"\n'
    (relay,) = load_relays(_write(tmp_path, text)).relay
    assert relay.password is not None
    assert relay.password.get_secret_value() == SECRET
    assert SECRET not in repr(relay)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ('password_env="RELAY_UNSET_0042"', "relay[1]: password_env: RELAY_UNSET_0042 is not set"),
        (f'password="{SECRET}"\npassword_env="HOME"', "password and password_env: set one"),
    ],
)
def test_a_bad_password_env_is_refused(tmp_path: Path, fields: str, message: str) -> None:
    text = f'[[relay]]\nname="a"\nhost="h"\nusername="u"\n{fields}\n'
    with pytest.raises(ConfigError) as caught:
        load_relays(_write(tmp_path, text))
    assert message in caught.value.reason
    assert SECRET not in str(caught.value)
