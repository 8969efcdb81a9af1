"""A start-up look at the Redis server: is it fit to hold a queue, and may this worker use it?

Two settings decide whether queued emails survive: an evicting `maxmemory-policy` deletes whole
keys (the stream itself) under memory pressure, and a server without persistence forgets every
entry when it restarts. The worker cannot fix either; it names the problem in a warning once, at
start-up, where an operator reading the logs of a new deployment will see it.

Managed Redis often disables or renames CONFIG; the check then says so at info level and the
worker goes on.

The Redis user's permissions are checked too (`service.store.access`): a worker allowed to read
and send but not to settle would send every email again and again, so a missing permission
stops it before it takes any entry, with exit code 2 (like an invalid setting: restarting
cannot help).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from redis.exceptions import RedisError, ResponseError

from ..connection import AnyRedis, node_holding
from ..store import QueueStore
from .backoff import retry_while_unavailable

__all__ = ["Finding", "assess_redis_config", "check_redis_access", "check_redis_config"]

log = structlog.get_logger("service.worker")

_SETTINGS: Final = ("maxmemory-policy", "appendonly", "save")


@dataclass(frozen=True)
class Finding:
    """One thing about the server's configuration that an operator should know."""

    level: Literal["warning", "info"]
    setting: str
    value: str
    problem: str


def assess_redis_config(config: Mapping[str, str]) -> list[Finding]:
    """The problems in `config` (CONFIG GET replies); settings absent from it are not judged."""
    findings: list[Finding] = []
    policy = config.get("maxmemory-policy")
    if policy is not None and policy.lower() != "noeviction":
        findings.append(
            Finding(
                "warning",
                "maxmemory-policy",
                policy,
                "Redis may evict queue keys (and the emails in them) when memory runs out; "
                "set maxmemory-policy noeviction",
            )
        )
    appendonly = config.get("appendonly")
    save = config.get("save")
    if appendonly is None or save is None:
        return findings  # persistence unknown: say nothing rather than guess
    aof = appendonly.lower() == "yes"
    snapshots = bool(save.strip())
    if not aof and not snapshots:
        findings.append(
            Finding(
                "warning",
                "appendonly",
                "no (and save is empty)",
                "no persistence: a Redis restart loses every queued email; "
                "set appendonly yes (appendfsync everysec)",
            )
        )
    elif not aof:
        findings.append(
            Finding(
                "info",
                "appendonly",
                "no",
                f"snapshots only (save {save!r}): a crash loses the emails queued since the last "
                "snapshot; appendonly yes narrows that to about a second",
            )
        )
    return findings


async def check_redis_config(redis: AnyRedis, key: str = "") -> list[Finding]:
    """Read the settings that matter (of the server holding `key`, on a cluster), log each
    finding, and return them.

    Never raises for a refused CONFIG (disabled, renamed, or not allowed by an ACL).
    """
    config: dict[str, str] = {}
    try:
        for name in _SETTINGS:  # one at a time: Redis < 7 takes one pattern per CONFIG GET
            reply = await redis.config_get(name, **await node_holding(redis, key))
            config.update({str(key): str(value) for key, value in reply.items()})
    except ResponseError as exc:
        # The server's own words ("unknown command 'CONFIG'", "NOPERM ..."): no secret in them.
        log.info("redis_config_unchecked", reason=str(exc))
        return []
    except RedisError as exc:
        log.info("redis_config_unchecked", reason=type(exc).__name__)
        return []
    findings = assess_redis_config(config)
    for finding in findings:
        emit = log.warning if finding.level == "warning" else log.info
        emit(
            "redis_config_problem",
            setting=finding.setting,
            value=finding.value,
            problem=finding.problem,
        )
    return findings


async def check_redis_access(
    store: QueueStore, *, limits: bool = False, domains: bool = False
) -> bool:
    """Whether the worker may run every command it needs (`limits`: the shared limiter's
    too; `domains`: the per-domain limiter's); logs what is missing, or why it could not be
    checked (the worker then goes on)."""
    access = await retry_while_unavailable(
        "check_permissions", lambda: store.access(limits=limits, domains=domains)
    )
    if not access.checked:
        # The server's own words ("NOPERM ... 'acl|dryrun' ..."): no secret in them.
        log.info("redis_permissions_unchecked", user=access.user, reason=access.reason)
        return True
    if access.missing:
        log.error(
            "redis_permissions_missing",
            user=access.user,
            missing=list(access.missing),
            checked_with=access.how,
            problem=f"the Redis user {access.user!r} may not run what the worker needs (it "
            "would send emails it cannot settle): grant them, e.g. ACL SETUSER "
            f"{access.user} {_grants(access.missing)}, and start the worker again",
        )
        return False
    log.debug("redis_permissions_checked", user=access.user, checked_with=access.how)
    return True


def _grants(missing: tuple[str, ...]) -> str:
    rules = [f"+{name}" for name in missing if not name.startswith("keys ")]
    keys = [name.removeprefix("keys ").split(", ") for name in missing if name.startswith("keys ")]
    rules += [f"~{key}" for group in keys for key in group]
    return " ".join(rules)
