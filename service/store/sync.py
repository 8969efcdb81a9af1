"""The producer's part of a queue's store on redis-py's sync client, for `SyncProducer`.

It builds the same script calls and reads the same replies as `QueueStore` (the shared builders
are in `scripts`, the error reading in `replies`); tests/integration/test_sync_producer.py proves
that both producers leave Redis in the same state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from ..connection import AnySyncRedis, durability_of, sync_node_holding
from ..errors import QueueFull
from ..keys import QueueKeys
from ..status import DEFAULT_STATUS_TTL, CancelResult, TaskState, TaskStatus, is_task_id
from . import replies, scripts
from .scripts import EnqueueReply, NewTask, ScriptCall

__all__ = ["SyncQueueStore"]


class SyncQueueStore:
    """Enqueueing, status and cancel on the queue `keys`, from threads (redis-py's sync client
    is thread-safe)."""

    def __init__(
        self,
        redis_client: AnySyncRedis,
        keys: QueueKeys,
        *,
        status_ttl: timedelta = DEFAULT_STATUS_TTL,
    ) -> None:
        self._redis = redis_client
        self.keys = keys
        self.status_ttl_ms = scripts.status_ttl_ms(status_ttl)
        self._scripts = {
            source: redis_client.register_script(source)
            for source in (scripts.ENQUEUE, scripts.ADD_NOW, scripts.TASK_STATUS, scripts.CANCEL)
        }
        self._durability = durability_of(redis_client)

    @property
    def queue(self) -> str:
        """The queue's name."""
        return self.keys.queue

    @property
    def waits_for_replicas(self) -> bool:
        """As `QueueStore.waits_for_replicas`."""
        return self._durability.replicas > 0

    def enqueue(
        self, tasks: Sequence[NewTask], *, max_backlog: int, window_ms: int
    ) -> EnqueueReply:
        """As `QueueStore.enqueue`."""
        call = scripts.enqueue(
            self.keys,
            tasks,
            max_backlog=max_backlog,
            window_ms=window_ms,
            status_ttl_ms=self.status_ttl_ms,
            now_ms=_now_ms(),
        )
        try:
            if self.waits_for_replicas:
                raw: Any = self._run_replicated(call)
            else:
                raw = self._run(call)
        except RedisError as exc:
            raise replies.enqueue_error(self.queue, exc) from exc
        reply = scripts.enqueue_reply(raw)
        if reply.full:
            raise QueueFull(self.queue, backlog=reply.backlog, limit=max_backlog)
        return reply

    def _run_replicated(self, call: scripts.ScriptCall) -> Any:
        """As `QueueStore._run_replicated`."""
        wanted, timeout_ms = self._durability.replicas, self._durability.timeout_ms
        node = sync_node_holding(self._redis, self.keys.stream)
        sha = self._scripts[scripts.ENQUEUE].sha
        for _ in range(2):
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
                pipe.execute_command("WAIT", wanted, timeout_ms, **node)
                reply, acked = pipe.execute(raise_on_error=False)
            if not isinstance(reply, NoScriptError):
                break
            self._redis.script_load(call.source)
        for result in (reply, acked):
            if isinstance(result, Exception):
                raise result
        if int(acked) < wanted:
            raise replies.not_replicated(self.queue, int(acked), wanted, timeout_ms)
        return reply

    def add_now(self, tasks: Sequence[NewTask]) -> None:
        """As `QueueStore.add_now`."""
        if self.status_ttl_ms:
            call = scripts.add_now(
                self.keys, tasks, status_ttl_ms=self.status_ttl_ms, now_ms=_now_ms()
            )
            try:
                self._run(call)
            except RedisError as exc:
                raise replies.enqueue_error(self.queue, exc) from exc
            return
        try:
            if len(tasks) == 1:
                self._redis.xadd(self.keys.lane(tasks[0].lane), scripts.xadd_fields(tasks[0]))
                return
            with self._redis.pipeline(transaction=True) as pipe:
                for task in tasks:
                    pipe.xadd(self.keys.lane(task.lane), scripts.xadd_fields(task))
                pipe.execute()
        except RedisError as exc:
            raise replies.enqueue_error(self.queue, exc) from exc

    def status(self, task_id: str) -> TaskStatus:
        """As `QueueStore.status`; Redis errors are raised as they come."""
        if not is_task_id(task_id):
            return TaskStatus(task_id, TaskState.UNKNOWN)
        return replies.task_status(task_id, self._run(scripts.task_status(self.keys, task_id)))

    def cancel(self, task_id: str) -> CancelResult:
        """As `QueueStore.cancel`; Redis errors are raised as they come."""
        if not is_task_id(task_id):
            return CancelResult(task_id, cancelled=False, was=TaskState.UNKNOWN)
        call = scripts.cancel(
            self.keys, task_id, status_ttl_ms=self.status_ttl_ms, now_ms=_now_ms()
        )
        return replies.cancel_result(task_id, self._run(call))

    def _run(self, call: ScriptCall) -> Any:
        return self._scripts[call.source](keys=call.keys, args=call.args)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
