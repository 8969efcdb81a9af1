"""The Redis configuration check as a table: CONFIG GET replies in, findings out."""

from __future__ import annotations

import pytest

from service.worker.redis_check import assess_redis_config

GOOD = {"maxmemory-policy": "noeviction", "appendonly": "yes", "save": ""}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (GOOD, []),
        ({**GOOD, "save": "3600 1 300 100"}, []),
        ({**GOOD, "maxmemory-policy": "NoEviction"}, []),
        ({**GOOD, "maxmemory-policy": "allkeys-lru"}, [("warning", "maxmemory-policy")]),
        ({**GOOD, "maxmemory-policy": "volatile-ttl"}, [("warning", "maxmemory-policy")]),
        ({**GOOD, "appendonly": "no"}, [("warning", "appendonly")]),
        ({**GOOD, "appendonly": "no", "save": "3600 1"}, [("info", "appendonly")]),
        (
            {"maxmemory-policy": "allkeys-lfu", "appendonly": "no", "save": " "},
            [("warning", "maxmemory-policy"), ("warning", "appendonly")],
        ),
        # A server (or an ACL) that hid a setting: judge only what is known.
        ({}, []),
        ({"appendonly": "no"}, []),
        ({"maxmemory-policy": "allkeys-random"}, [("warning", "maxmemory-policy")]),
    ],
)
def test_findings(config: dict[str, str], expected: list[tuple[str, str]]) -> None:
    assert [(f.level, f.setting) for f in assess_redis_config(config)] == expected


def test_warnings_name_the_setting_its_value_and_the_fix() -> None:
    bad = {"maxmemory-policy": "allkeys-lru", "appendonly": "no", "save": ""}
    policy, persistence = assess_redis_config(bad)
    assert policy.value == "allkeys-lru"
    assert "evict" in policy.problem
    assert "noeviction" in policy.problem
    assert "no persistence" in persistence.problem
    assert "appendonly yes" in persistence.problem
