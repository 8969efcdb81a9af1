"""The start-up permission check's pure parts: ACL rules evaluated as Redis 6.2 does, as tables."""

from __future__ import annotations

import re

import pytest

from service.keys import QueueKeys
from service.store import domains as domain_scripts
from service.store import limiter, scripts
from service.store.access import denied, glob_pattern, worker_commands

SCRIPTING_62 = {"scripting": ["eval", "evalsha", "script"]}  # ACL CAT on 6.2: parents only
SCRIPTING_7 = {"scripting": ["eval", "evalsha", "script|load", "script|flush"]}
WANTED = ["evalsha", "script|load", "xack", "xgroup|create", "xgroup|delconsumer"]


@pytest.mark.parametrize(
    ("rules", "categories", "refused"),
    [
        ("+@all", {}, []),
        ("allcommands", {}, []),
        ("", {}, WANTED),  # a new user may run nothing
        ("+@all -evalsha", {}, ["evalsha"]),
        ("-evalsha +@all", {}, []),  # later rules win
        ("+@all -@scripting", SCRIPTING_62, ["evalsha", "script|load"]),
        ("+@all -@scripting", SCRIPTING_7, ["evalsha", "script|load"]),
        ("-@all +@scripting +xack", SCRIPTING_7, ["xgroup|create", "xgroup|delconsumer"]),
        ("-@all +@all -xgroup", {}, ["xgroup|create", "xgroup|delconsumer"]),
        ("-@all +xgroup|create +xack +@scripting", SCRIPTING_62, ["xgroup|delconsumer"]),
        ("+@all -xgroup|delconsumer", {}, ["xgroup|delconsumer"]),
        ("+@all nocommands", {}, WANTED),
    ],
)
def test_rules_allow_what_redis_would(
    rules: str, categories: dict[str, list[str]], refused: list[str]
) -> None:
    assert denied(rules.split(), categories, WANTED) == refused


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("*", "{emails}:stream", True),
        ("{emails}:*", "{emails}:stream", True),
        ("{emails}:*", "{other}:stream", False),
        ("{emails}:s?ream", "{emails}:stream", True),
        ("{emails}:[sd]*", "{emails}:dead", True),
        ("{emails}:[^sd]*", "{emails}:dead", False),
        ("{emails}:[a-e]*", "{emails}:delayed", True),
        (r"\{emails\}:*", "{emails}:workers", True),
        (r"a\*", "a*", True),
        (r"a\*", "ab", False),
        ("a.b", "axb", False),  # a regex metacharacter is a plain character in a Redis pattern
    ],
)
def test_key_patterns_match_as_redis_globs(pattern: str, key: str, matches: bool) -> None:
    assert bool(glob_pattern(pattern).fullmatch(key)) is matches


@pytest.mark.parametrize(
    ("limits", "domains", "sources"),
    [
        # The status ledger's commands are checked when TASK_STATUS_TTL_SECONDS is above 0.
        (False, False, (scripts.SETTLE, scripts.PROMOTE_DUE, scripts.FORGET_CONSUMER)),
        # SMTP_RATE_LIMIT or SMTP_DAILY_QUOTA set
        (True, False, (limiter.ACQUIRE, limiter.THROTTLE)),
        (
            False,
            True,
            (domain_scripts.DOMAIN_PLAN, domain_scripts.DOMAIN_COMMIT),
        ),  # SMTP_DOMAIN_LIMITS set
    ],
)
def test_every_command_of_the_worker_s_scripts_is_checked(
    limits: bool, domains: bool, sources: tuple[str, ...]
) -> None:
    # Redis checks ACLs inside scripts too: a command a script runs must be in the list.
    commands = worker_commands(QueueKeys("emails"), limits=limits, domains=domains, status=True)
    names = {command.name for command in commands}
    for source in sources:
        called = re.findall(r"redis\.p?call\('([A-Z]+)'(?:, '([A-Z]+)')?", source)
        for command, subcommand in called:
            name = command.lower()
            if command == "XGROUP":
                name = f"xgroup|{subcommand.lower()}"
            assert name in names, (name, source[:40])


def test_the_durability_mode_checks_wait() -> None:
    keys = QueueKeys("emails")
    assert "wait" not in {command.name for command in worker_commands(keys)}
    assert "wait" in {command.name for command in worker_commands(keys, durable=True)}


def test_every_checked_command_names_only_this_queue_s_keys() -> None:
    keys = QueueKeys("emails")
    for command in worker_commands(keys, limits=True, domains=True, status=True):
        queue_keys = [arg for arg in command.args if arg.startswith("{")]
        assert all(arg.startswith("{emails}:") for arg in queue_keys), command
