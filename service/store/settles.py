"""Settles that are due at the same time travel together in one pipeline round trip.

Each settle is still its own script call (its own atomic step, with its own reply). Nothing
waits to fill a batch: a settle goes out on the next turn of the event loop, together with the
ones that came meanwhile, and those that arrive while a batch is in flight form the next one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

from ..connection import AnyRedis, node_holding
from ..topology import Durability
from .scripts import SETTLE, ScriptCall

__all__ = ["SettleBatcher"]


class SettleBatcher:
    """Runs SETTLE calls, many per round trip; each caller gets its own reply or error."""

    def __init__(self, redis: AnyRedis, durability: Durability, stream: str) -> None:
        self._redis = redis
        self._durability = durability
        self._stream = stream
        self._sha = redis.register_script(SETTLE).sha
        # Calls waiting for the next pipeline: (EVALSHA arguments, who waits for the reply).
        self._due: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def run(self, call: ScriptCall) -> Any:
        """Run one SETTLE call; return its raw reply."""
        reply = asyncio.get_running_loop().create_future()
        self._due.append(([len(call.keys), *call.keys, *call.args], reply))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="settles")
        return await reply

    async def _send(self) -> None:
        """Send the calls due, one pipeline per batch, until none is left.

        A Redis outage fails the whole batch, and each caller retries its own settle.
        """
        load_script = loaded = False
        while self._due:
            batch, self._due = self._due, []
            try:
                if load_script:  # Redis lost its scripts (a restart): load SETTLE again
                    await self._redis.script_load(SETTLE)
                    loaded = True
                replies = await self._pipeline([call for call, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to each waiting caller
                for _, reply in batch:
                    if not reply.done():
                        reply.set_exception(exc)
                continue
            except BaseException:
                for _, reply in batch:
                    reply.cancel()
                raise
            load_script = False
            for (call, reply), result in zip(batch, replies, strict=True):
                if reply.done():
                    continue  # its caller was cancelled meanwhile
                if isinstance(result, NoScriptError) and not loaded:
                    load_script = True
                    self._due.append((call, reply))  # sent again once loaded
                elif isinstance(result, Exception):
                    reply.set_exception(result)
                else:
                    reply.set_result(result)

    async def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        """One EVALSHA per call in one round trip; replies (or errors) in order.

        With `?wait_replicas=`, a WAIT on the same connection follows: the settles return once
        the replicas hold them or the wait timed out. Either way they stand: a settle a
        failover loses means the email is sent again, never that it is lost.
        """
        wanted = self._durability.replicas
        node = await node_holding(self._redis, self._stream) if wanted else {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                # As a plain command: a cluster's pipeline refuses evalsha(), not EVALSHA.
                pipe.execute_command("EVALSHA", self._sha, *call)
            if wanted:
                pipe.execute_command("WAIT", wanted, self._durability.timeout_ms, **node)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies[: len(calls)]
