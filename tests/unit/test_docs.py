"""The settings are documented once, in step with the code.

`config/example.env` explains every setting in full and the README sums them up in one table; both
must name exactly the fields of the settings objects (a field's variable is its name upper-cased),
and the defaults example.env shows must be the real ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.settings import DashboardSettings, QueueSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = ROOT / "config" / "example.env"
README = ROOT / "README.md"

# `NAME=value` (the default) or `# NAME=value` (unset by default; an example value).
_ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
_TABLE_ROW = re.compile(r"^\|(?P<first>[^|]*)\|")
_VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def settings_variables() -> set[str]:
    """Every environment variable the settings objects read."""
    names: set[str] = set()
    for cls in (QueueSettings, WorkerSettings, DashboardSettings):
        prefix = cls.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def example_env_lines(text: str) -> list[tuple[str, str, bool]]:
    """(variable, value, commented) for every assignment line of an example.env text."""
    found = []
    for line in text.splitlines():
        if match := _ENV_LINE.match(line):
            found.append((match[2], match[3], match[1] is not None))
    return found


def readme_table_variables(text: str) -> list[str]:
    """The variables of the first table in the README's "## Settings" section, one per row."""
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    variables = []
    for row in rows[2:]:  # past the header and its separator
        match = _TABLE_ROW.match(row)
        names = _VARIABLE.findall(match["first"]) if match else []
        assert len(names) == 1, f"a settings row names one variable in its first cell: {row}"
        variables.append(names[0])
    return variables


def _mismatch(documented: list[str], where: str) -> list[str]:
    fields = settings_variables()
    problems = [
        f"{name} is in {where} twice" for name in set(documented) if documented.count(name) > 1
    ]
    problems += [f"{name} is missing from {where}" for name in sorted(fields - set(documented))]
    problems += [
        f"{where} names {name}, not a setting" for name in sorted(set(documented) - fields)
    ]
    return problems


def test_example_env_names_every_setting_and_nothing_else() -> None:
    documented = [name for name, _, _ in example_env_lines(EXAMPLE_ENV.read_text())]
    assert _mismatch(documented, "config/example.env") == []


def test_readme_settings_table_names_every_setting_and_nothing_else() -> None:
    documented = readme_table_variables(README.read_text())
    assert _mismatch(documented, "the README's settings table") == []


def test_example_env_shows_the_real_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    from_example = WorkerSettings(_env_file=EXAMPLE_ENV)
    required = {name for name, field in WorkerSettings.model_fields.items() if field.is_required()}
    defaults = WorkerSettings(
        _env_file=None, **{name: getattr(from_example, name) for name in required}
    )
    shown, real = from_example.model_dump(), defaults.model_dump()
    wrong = {name.upper(): (shown[name], real[name]) for name in real if shown[name] != real[name]}
    assert wrong == {}, "example.env shows (value, real default) for these"
    # A commented-out line stands for "unset": that field's default must be None.
    for name, _, commented in example_env_lines(EXAMPLE_ENV.read_text()):
        if commented and name.lower() in WorkerSettings.model_fields:
            assert getattr(defaults, name.lower()) is None, (
                f"{name} is commented out, has a default"
            )


def test_example_env_shows_the_dashboards_real_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    shown = DashboardSettings(_env_file=EXAMPLE_ENV).model_dump()
    real = DashboardSettings(_env_file=None).model_dump()
    dashboard = [name for name in real if name.startswith("dashboard_")]
    assert {name: shown[name] for name in dashboard} == {name: real[name] for name in dashboard}
    for name, _, commented in example_env_lines(EXAMPLE_ENV.read_text()):
        if commented and name.lower() in dashboard:
            assert real[name.lower()] is None, f"{name} is commented out, has a default"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("REDIS_URL=x\n", "is missing from"),  # every other setting is missing
        (
            "\n".join(f"{n}=" for n in sorted(settings_variables())) + "\nSMTP_HOSTS=x\n",
            "SMTP_HOSTS",
        ),
        ("\n".join(f"# {n}=" for n in sorted(settings_variables())) + "\nREDIS_URL=x\n", "twice"),
    ],
)
def test_the_check_catches_drift(text: str, problem: str) -> None:
    documented = [name for name, _, _ in example_env_lines(text)]
    assert any(problem in line for line in _mismatch(documented, "example"))


def test_the_readme_parser_reads_one_variable_per_row() -> None:
    text = "# X\n\n## Settings\n\n| Variable | Default |\n|---|---|\n| `A_B` | 1 |\n\n## Next\n"
    assert readme_table_variables(text) == ["A_B"]
    with pytest.raises(AssertionError, match="one variable"):
        readme_table_variables(text.replace("| `A_B` |", "| `A_B`, `C_D` |"))
