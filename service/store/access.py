"""May this Redis user run what a worker runs? Checked once at start-up, before any entry is taken.

A worker missing one permission (EVALSHA, say) would send an email and then fail to settle it:
the entry stays pending and the email goes out again. Redis checks ACLs per command and per
key, inside scripts too, so the list below names every command a worker runs, with this
queue's keys, including those its scripts run.

- Redis >= 7 answers with ACL DRYRUN (the server's own verdict), if the user may run it.
- Redis 6.2 has no DRYRUN: ACL GETUSER gives the user's rules, evaluated here (`denied`), with
  ACL CAT for the categories they name.
- A user allowed neither cannot be checked: the caller says so and goes on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ResponseError

from ..connection import AnyRedis, node_holding
from ..keys import CONSUMER_GROUP, QueueKeys
from . import domains as domains_store
from . import history, lanes, limiter, scripts
from .replies import as_str

__all__ = ["Access", "Command", "check_access", "denied", "worker_commands"]

_PROBE: Final = "acl-probe"  # a consumer name, field or member; DRYRUN runs nothing


@dataclass(frozen=True, slots=True)
class Command:
    """One command a worker runs: its ACL name (`xgroup|create`) and a sample of its arguments."""

    name: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Access:
    """The outcome of the check: what is `missing`, or why it could not be `checked`."""

    user: str
    checked: bool
    missing: tuple[str, ...] = ()  # command names, then one "keys ..." item
    how: str = ""  # "ACL DRYRUN" or "ACL GETUSER"
    reason: str = ""  # why it could not be checked


def worker_commands(
    keys: QueueKeys,
    *,
    limits: bool = False,
    domains: bool = False,
    status: bool = False,
    durable: bool = False,
) -> tuple[Command, ...]:
    """Every command a worker runs on the queue `keys` (its scripts' commands included);
    `limits`: with the shared limiter's (SMTP_RATE_LIMIT or SMTP_DAILY_QUOTA set); `domains`:
    with the per-domain limiter's (SMTP_DOMAIN_LIMITS set); `status`: with the status
    ledger's (TASK_STATUS_TTL_SECONDS above 0); `durable`: with the WAIT after its settles
    (`?wait_replicas=` on REDIS_URL)."""
    stream, delayed, entries, dead = keys.stream, keys.delayed, keys.delayed_entries, keys.dead
    sent, group = keys.sent("*"), CONSUMER_GROUP

    def evalsha(source: str, *script_keys: str) -> Command:
        sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - how Redis names a script
        return Command("evalsha", ("EVALSHA", sha, str(len(script_keys)), *script_keys))

    every_lane = [
        ("xreadgroup", "XREADGROUP GROUP {group} {probe} COUNT 1 STREAMS {lane} >"),
        ("xread", "XREAD COUNT 1 STREAMS {lane} 0-0"),
        ("xrevrange", "XREVRANGE {lane} + - COUNT 1"),
        ("xautoclaim", "XAUTOCLAIM {lane} {group} {probe} 0 0-0 COUNT 1"),
        ("xclaim", "XCLAIM {lane} {group} {probe} 0 0-0 JUSTID"),
        ("xpending", "XPENDING {lane} {group} - + 1 {probe}"),
        ("xack", "XACK {lane} {group} 0-0"),
        ("xdel", "XDEL {lane} 0-0"),
        ("xgroup|create", "XGROUP CREATE {lane} {group} 0 MKSTREAM"),
        ("xgroup|delconsumer", "XGROUP DELCONSUMER {lane} {group} {probe}"),
        ("xinfo|groups", "XINFO GROUPS {lane}"),
        ("xlen", "XLEN {lane}"),
        ("xadd", "XADD {lane} * f v"),
    ]
    plain = [
        ("ping", "PING"),
        *(
            (name, line.format(lane=lane, group=group, probe=_PROBE))
            for lane in keys.lanes
            for name, line in every_lane
        ),
        ("xlen", f"XLEN {dead}"),
        ("xadd", f"XADD {dead} * f v"),
        ("zcard", f"ZCARD {delayed}"),
        ("zadd", f"ZADD {delayed} 0 {_PROBE}"),
        ("zrangebyscore", f"ZRANGEBYSCORE {delayed} -inf 0 LIMIT 0 1"),
        ("zrange", f"ZRANGE {delayed} 0 0 WITHSCORES"),
        ("zrem", f"ZREM {delayed} {_PROBE}"),
        ("hget", f"HGET {entries} {_PROBE}"),
        ("hset", f"HSET {entries} {_PROBE} v"),
        ("hdel", f"HDEL {entries} {_PROBE}"),
        ("hset", f"HSET {keys.workers} {_PROBE} v"),
        ("hdel", f"HDEL {keys.workers} {_PROBE}"),
        ("hlen", f"HLEN {keys.minute('*')}"),
        ("hincrby", f"HINCRBY {keys.minute('*')} sent 1"),
        ("hset", f"HSET {keys.minute('*')} {_PROBE} v"),
        ("pexpireat", f"PEXPIREAT {keys.minute('*')} 1"),
        ("exists", f"EXISTS {sent}"),
        ("set", f"SET {sent} v PX 1"),
        ("script|load", "SCRIPT LOAD return"),
    ]
    if status:
        record = keys.status("*")
        plain += [
            ("hget", f"HGET {record} s"),
            ("hset", f"HSET {record} s v"),
            ("pexpireat", f"PEXPIREAT {record} 1"),
        ]
    limited: list[Command] = []
    if limits:
        rate, quota = keys.limiter, keys.quota
        limiter_lines = [
            ("time", "TIME"),
            ("hmget", f"HMGET {rate} tat"),
            ("hset", f"HSET {rate} {_PROBE} v"),
            ("hdel", f"HDEL {rate} {_PROBE}"),
            ("type", f"TYPE {quota}"),
            ("lindex", f"LINDEX {quota} 0"),
            ("lpop", f"LPOP {quota}"),
            ("llen", f"LLEN {quota}"),
            ("lset", f"LSET {quota} -1 v"),
            ("rpush", f"RPUSH {quota} v"),
            ("pexpire", f"PEXPIRE {quota} 1"),
            ("lrange", f"LRANGE {quota} 0 -1"),
        ]
        limited = [
            *(Command(name, tuple(line.split(" "))) for name, line in limiter_lines),
            evalsha(limiter.ACQUIRE, rate, quota),
            evalsha(limiter.THROTTLE, rate),
        ]
    if durable:
        plain.append(("wait", "WAIT 1 0"))
    if domains:
        hashed, kept = keys.domain_limiter, keys.domain_kept("*")
        domain_lines = [
            ("time", "TIME"),
            ("type", f"TYPE {hashed}"),
            ("hmget", f"HMGET {hashed} f"),
            ("hset", f"HSET {hashed} {_PROBE} v"),
            ("hdel", f"HDEL {hashed} {_PROBE}"),
            ("type", f"TYPE {kept}"),
            ("zscore", f"ZSCORE {kept} {_PROBE}"),
            ("zcard", f"ZCARD {kept}"),
            ("zrange", f"ZRANGE {kept} 0 0"),
            ("zrank", f"ZRANK {kept} {_PROBE}"),
            ("zremrangebyscore", f"ZREMRANGEBYSCORE {kept} -inf 0"),
            ("zrem", f"ZREM {kept} {_PROBE}"),
            ("zadd", f"ZADD {kept} 0 {_PROBE}"),
            ("hget", f"HGET {keys.status('*')} s"),  # is a kept slot's task finished?
        ]
        limited += [
            *(Command(name, tuple(line.split(" "))) for name, line in domain_lines),
            evalsha(domains_store.DOMAIN_PLAN, hashed, kept),
            evalsha(domains_store.DOMAIN_COMMIT, hashed, kept),
        ]
    return (
        *(Command(name, tuple(line.split(" "))) for name, line in plain),
        evalsha(scripts.SETTLE, stream, delayed, entries, dead, sent, keys.status("*")),
        evalsha(scripts.PROMOTE_DUE, *keys.lanes, delayed, entries, dead),
        evalsha(scripts.FORGET_CONSUMER, *keys.lanes),
        evalsha(lanes.READ_LANES, *keys.lanes),
        evalsha(history.ADD_MINUTES, keys.minute("*")),
        *limited,
    )


def _keys_of(commands: Iterable[Command], keys: QueueKeys) -> list[str]:
    every = {*keys.lanes, keys.delayed, keys.delayed_entries, keys.dead, keys.workers}
    every |= {keys.limiter, keys.quota, keys.domain_limiter, keys.domain_kept("*")}
    every |= {keys.sent("*"), keys.status("*"), keys.minute("*")}
    used = {arg for command in commands for arg in command.args}
    return sorted(every & used)


async def check_access(
    redis: AnyRedis,
    user: str,
    keys: QueueKeys,
    *,
    limits: bool = False,
    domains: bool = False,
    status: bool = False,
    durable: bool = False,
) -> Access:
    """Whether `user` may run every command of `worker_commands(keys, ...)`."""
    commands = worker_commands(keys, limits=limits, domains=domains, status=status, durable=durable)
    node = await node_holding(redis, keys.stream)  # ACL commands name no key
    try:
        verdicts = await _dry_run(redis, user, commands, node)
    except ResponseError as dryrun_refused:
        try:
            return await _from_rules(redis, user, commands, keys, node)
        except ResponseError as getuser_refused:
            return Access(
                user,
                checked=False,
                reason=f"ACL DRYRUN: {dryrun_refused}; ACL GETUSER: {getuser_refused}",
            )
    missing: dict[str, None] = {}
    denied_keys: dict[str, None] = {}
    for command, verdict in zip(commands, verdicts, strict=True):
        if verdict == "OK":
            continue
        key = re.search(r"access the '(.+)' key", verdict)
        if key:
            denied_keys[key.group(1)] = None
        else:
            missing[command.name] = None
    return Access(user, checked=True, missing=_missing(missing, denied_keys), how="ACL DRYRUN")


async def _dry_run(
    redis: AnyRedis, user: str, commands: Sequence[Command], node: dict[str, Any]
) -> list[str]:
    """ACL DRYRUN of each command, in one round trip; raises if DRYRUN itself is refused."""
    first = await _command(redis, "ACL", "DRYRUN", user, *commands[0].args, **node)
    async with redis.pipeline(transaction=False) as pipe:
        for command in commands[1:]:
            pipe.execute_command("ACL", "DRYRUN", user, *command.args, **node)
        rest: list[Any] = await pipe.execute(raise_on_error=False)
    verdicts = []
    for reply in (first, *rest):
        if isinstance(reply, Exception):
            raise reply
        verdicts.append(as_str(reply))
    return verdicts


async def _from_rules(
    redis: AnyRedis,
    user: str,
    commands: Sequence[Command],
    keys: QueueKeys,
    node: dict[str, Any],
) -> Access:
    """The Redis 6.2 way: read the user's rules and evaluate them."""
    reply: Any = await _command(redis, "ACL", "GETUSER", user, **node)
    if reply is None:
        return Access(user, checked=False, reason=f"ACL GETUSER: no user {user!r}")
    fields = {as_str(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
    flags = {as_str(flag) for flag in fields.get("flags", [])}
    rules = as_str(fields.get("commands", b"")).split()
    patterns = _key_patterns(fields.get("keys", []), flags)
    if patterns is None or fields.get("selectors"):
        return Access(user, checked=False, reason="ACL GETUSER: rules too complex to evaluate")
    categories: dict[str, frozenset[str]] = {}
    for rule in rules:
        if rule[1:2] == "@" and rule[2:] != "all" and rule[2:] not in categories:
            members: Any = await _command(redis, "ACL", "CAT", rule[2:], **node)
            categories[rule[2:]] = frozenset(as_str(member) for member in members)
    names = {command.name: None for command in commands}
    missing = dict.fromkeys(denied(rules, categories, names))
    denied_keys: dict[str, None] = {}
    for key in _keys_of(commands, keys):
        if not any(pattern.fullmatch(key) for pattern in patterns):
            denied_keys[key] = None
    return Access(user, checked=True, missing=_missing(missing, denied_keys), how="ACL GETUSER")


async def _command(redis: AnyRedis, *args: str, **node: Any) -> Any:
    run: Callable[..., Awaitable[Any]] = redis.execute_command  # untyped in redis-py
    return await run(*args, **node)


def _missing(commands: Mapping[str, None], keys: Mapping[str, None]) -> tuple[str, ...]:
    found = sorted(commands)
    if keys:
        found.append("keys " + ", ".join(sorted(keys)))
    return tuple(found)


def _key_patterns(reply: Any, flags: Collection[str]) -> list[re.Pattern[str]] | None:
    """The user's key patterns as regular expressions; None where they are beyond this check
    (Redis 7's read-only or write-only patterns)."""
    if "allkeys" in flags:
        return [re.compile(".*", re.DOTALL)]
    tokens = as_str(reply).split() if isinstance(reply, bytes | str) else map(as_str, reply)
    patterns = []
    for token in tokens:
        if token.startswith("%"):
            return None
        patterns.append(glob_pattern(token.removeprefix("~")))
    return patterns


def denied(
    rules: Sequence[str], categories: Mapping[str, Collection[str]], commands: Iterable[str]
) -> list[str]:
    """The `commands` (ACL names: `evalsha`, `xgroup|create`) that `rules` do not allow.

    `rules` are a user's command rules in order (`+@all -evalsha`, as ACL GETUSER describes
    them); `categories` lists the commands of each category named (ACL CAT). Later rules win.
    """
    refused = []
    for command in commands:
        parent = command.partition("|")[0]
        allowed = False
        for rule in rules:
            if rule in ("allcommands", "nocommands"):
                allowed = rule == "allcommands"
                continue
            grant, target = rule[:1] == "+", rule[1:]
            if target == "@all":
                allowed = grant
            elif target.startswith("@"):
                members = categories.get(target[1:], ())
                if command in members or parent in members:
                    allowed = grant
            elif target in (command, parent):
                allowed = grant
        if not allowed:
            refused.append(command)
    return refused


def glob_pattern(pattern: str) -> re.Pattern[str]:
    """A Redis key pattern (`*`, `?`, `[a-z]`, `[^x]`, backslash escapes) as a regex."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body.removeprefix("^")
            out.append(("[^" if negate else "[") + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)
