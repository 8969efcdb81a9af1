"""Injecting one fault of the plan into a running system, and recording when it was active."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Final

import orjson
from redis.exceptions import RedisError

from service.connection import AnyRedis
from tests.chaos.attribution import Disruption
from tests.chaos.mailserver import MailServer
from tests.chaos.plan import Fault
from tests.chaos.processes import ChaosRedis, Incarnation, WorkerFleet
from tests.chaos.proxy import FaultProxy, Mode
from tests.topologies import Cluster, fail_over

__all__ = ["Injector", "malformed_entry"]

STREAM: Final = "{emails}:stream"
# A supervisor (systemd, Render) restarts a killed worker after about this long.
_RESTART_DELAY_S: Final = 0.5


def malformed_entry(variant: str, marker: int) -> dict[str, bytes]:
    """An entry no worker can decode; `chaos_malformed` lets the harness find its dead letter."""
    task = orjson.dumps({"to": "a@example.com", "subject": "s", "text": "t"})
    good = {"v": b"1", "id": b"%032x" % marker, "at": b"1700000000000", "task": task}
    broken: dict[str, bytes] = {
        "no version": {k: v for k, v in good.items() if k != "v"},
        "unknown version": {**good, "v": b"99"},
        "bad JSON": {**good, "task": b'{"to": "a@example.com", "subj'},
        "missing task": {k: v for k, v in good.items() if k != "task"},
        "bad task id": {**good, "id": b"not-a-task-id"},
        "invalid task": {**good, "task": orjson.dumps({"to": "nobody", "subject": "\r\nBcc: x"})},
        # One byte over the decoder's 16 MiB limit: refused before any JSON is parsed.
        "oversized": {**good, "task": b" " * (16 * 1024 * 1024 + 1)},
    }[variant]
    return {**broken, "chaos_malformed": str(marker).encode()}


class Injector:
    """Applies faults; every fault undoes itself when its time is up or when it is cancelled."""

    def __init__(
        self, redis: ChaosRedis | Cluster, admin: AnyRedis, fleet: WorkerFleet, mail: MailServer
    ) -> None:
        self._redis = redis
        self._admin = admin
        self._fleet = fleet
        self._mail = mail
        # A restart and a pause of Redis never overlap; nor do two failovers: the next one waits
        # until the killed node is back as a replica.
        self._redis_turn = asyncio.Lock()
        self.disruptions: list[Disruption] = []
        self.counts: dict[str, int] = {}
        self.malformed_written: dict[int, str] = {}
        self.failed: list[str] = []  # faults that could not be injected, and why

    async def inject(self, fault: Fault) -> None:
        """Run one fault to its end (or until cancelled, undoing it on the way out)."""
        name = "oversized entry (16 MiB + 1)" if fault.variant == "oversized" else fault.kind
        if fault.kind != "redis failover":  # counted once it starts (it may wait its turn)
            self.counts[name] = self.counts.get(name, 0) + 1
        try:
            await self._inject(fault)
        except Exception as exc:
            # The run did not have the fault its report would claim: that fails it.
            self.failed.append(f"{fault.kind} at {fault.at_s:.1f} s: {exc!r}")
            raise

    async def _inject(self, fault: Fault) -> None:
        kind = fault.kind
        if kind.startswith("worker"):
            await self._worker_fault(fault)
        elif kind.startswith("redis link") or kind.startswith("smtp link"):
            await self._link_fault(fault)
        elif kind.startswith("redis"):
            async with self._redis_turn:
                await self._redis_fault(fault)
        elif kind == "malformed entry":
            await self.write_malformed(fault.variant)
        else:
            await self._mail_fault(fault)

    async def write_malformed(self, variant: str) -> None:
        """XADD a broken entry straight into the stream (retried while Redis is away)."""
        marker = len(self.malformed_written) + 1
        self.malformed_written[marker] = variant
        entry = malformed_entry(variant, marker)
        while True:
            try:
                await self._admin.xadd(STREAM, entry)  # type: ignore[arg-type]
            except (RedisError, OSError):
                await asyncio.sleep(0.2)  # Redis restarting or paused: write it when it is back
            else:
                return

    def _pick(self, slot: int) -> Incarnation | None:
        alive = self._fleet.alive()
        return alive[slot % len(alive)] if alive else None

    async def _worker_fault(self, fault: Fault) -> None:
        target = self._pick(fault.slot)
        if target is None:
            return
        if fault.kind.startswith("worker SIGKILL"):
            self._fleet.kill(target)
            self._note(fault.kind, time.time(), target.number)
            await asyncio.sleep(_RESTART_DELAY_S)
            await self._fleet.start()
        elif fault.kind.startswith("worker SIGTERM"):
            await self._fleet.start()  # a deploy starts the new instance first
            # The old instance is up (a restart just before may still be importing): a SIGTERM
            # before its handlers are in place ends it as the default action does.
            await self._fleet.wait_started(target)
            await self._fleet.terminate(target)
        else:
            start = time.time()
            target.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.length_s)
            finally:
                target.process.send_signal(signal.SIGCONT)
                self._note(fault.kind, start, target.number)

    async def _link_fault(self, fault: Fault) -> None:
        target = self._pick(fault.slot)
        if target is None:
            return
        link = target.redis_link if fault.kind.startswith("redis") else target.smtp_link
        if link is None:
            return  # no Redis proxy on a cluster (the plan draws no such fault there)
        mode: Mode = fault.kind.rsplit(" ", 1)[1]  # type: ignore[assignment]
        await self._hold(link, mode, fault, target.number)

    async def _hold(self, link: FaultProxy, mode: Mode, fault: Fault, number: int) -> None:
        start = time.time()
        link.set_mode(mode, fault.latency_s)
        try:
            await asyncio.sleep(fault.length_s)
        finally:
            link.set_mode("pass")
            self._note(fault.kind, start, number)

    async def _redis_fault(self, fault: Fault) -> None:
        if isinstance(self._redis, Cluster):
            await self._failover(self._redis)
            return
        start = time.time()
        try:
            if fault.kind == "redis restart":
                await asyncio.to_thread(self._redis.stop)  # SIGTERM: the AOF is flushed
                await asyncio.sleep(fault.length_s)
            else:
                self._redis.pause()
                await asyncio.sleep(fault.length_s)
        finally:
            self._redis.resume()
            if not self._redis.running:
                await asyncio.to_thread(self._redis.start, 30.0)
            self._note(fault.kind, start, None)

    async def _failover(self, cluster: Cluster) -> None:
        """Kill the queue's primary, let its replica take over, bring the killed node back as a
        replica and wait for it to sync. Its window runs from the kill until then: a settle or
        a read the promoted replica did not have shows up as a resend within it."""
        self.counts["redis failover"] = self.counts.get("redis failover", 0) + 1
        job = asyncio.ensure_future(asyncio.to_thread(_fail_over_and_relink, cluster))
        try:
            # Shielded: a failover cut short would leave the cluster without the killed node.
            killed_at = await asyncio.shield(job)
        except asyncio.CancelledError:
            killed_at = await job
            self._note("redis failover", killed_at, None)
            raise
        self._note("redis failover", killed_at, None)

    async def _mail_fault(self, fault: Fault) -> None:
        behaviour = self._mail.behaviour
        start = time.time()
        if fault.kind == "smtp 4xx storm":
            behaviour.storm_until = start + fault.length_s
        elif fault.kind == "smtp slow DATA":
            behaviour.slow_data_s = fault.latency_s
            behaviour.slow_until = start + fault.length_s
        elif fault.kind == "smtp drop after final dot":
            behaviour.drop_next += fault.count
        self._note(fault.kind, start, None, start + fault.length_s)

    def heal(self) -> None:
        """Undo what cancelled faults may have left behind (their own `finally` did the rest)."""
        self._mail.behaviour.storm_until = self._mail.behaviour.slow_until = 0.0
        self._mail.behaviour.drop_next = 0
        for incarnation in self._fleet.alive():
            if incarnation.redis_link is not None:
                incarnation.redis_link.set_mode("pass")
            incarnation.smtp_link.set_mode("pass")
            if incarnation.process.poll() is None:
                os.kill(incarnation.process.pid, signal.SIGCONT)

    def _note(self, kind: str, start: float, number: int | None, end: float | None = None) -> None:
        self.disruptions.append(Disruption(kind, start, end or time.time(), number))


def _fail_over_and_relink(cluster: Cluster) -> float:
    killed_at = fail_over(cluster)
    cluster.wait_replicas_linked()
    return killed_at
