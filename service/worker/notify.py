"""The systemd notification protocol (`sd_notify`), without a dependency.

A message is one datagram of newline-separated `KEY=value` lines sent to the unix socket named by
`$NOTIFY_SOCKET`; a leading `@` names a socket in the abstract namespace. With the variable unset
(not under systemd, or a unit that is not `Type=notify`) every call does nothing, so the worker
runs the same everywhere.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import Final

import structlog

__all__ = ["Notifier", "watchdog_interval"]

log = structlog.get_logger("service.worker")

# systemd reads at most this much of one message (NOTIFY_BUFFER_MAX); longer ones are dropped.
_MAX_MESSAGE_BYTES: Final = 4096


class Notifier:
    """Sends state changes to the service manager named by `NOTIFY_SOCKET`, if any."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for `$NOTIFY_SOCKET` (one that does nothing when it is unset)."""
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (`NOTIFY_SOCKET` was set to a usable address)."""
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send `fields` (e.g. `READY="1"`) as one message; return whether it was sent.

        Never raises: a service manager that went away must not take the worker down with it.
        """
        if self._address is None:
            return False
        message = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        data = message.encode()[:_MAX_MESSAGE_BYTES]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # The socket's buffer is the service manager's: a datagram is taken or refused
                # at once, so this never waits on the event loop's behalf.
                sock.setblocking(False)
                sock.sendto(data, self._address)
        except OSError as exc:
            if not self._warned:  # once: a watchdog would repeat it every few seconds
                self._warned = True
                log.warning("notify_failed", error=type(exc).__name__, errno=exc.errno)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd the service is up (`READY=1`), with a human-readable status."""
        return self.notify(READY="1", STATUS=status)

    def stopping(self, status: str = "stopping: draining in-flight sends") -> bool:
        """Tell systemd the service is shutting down (`STOPPING=1`)."""
        return self.notify(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        """Update the status line `systemctl status` shows."""
        return self.notify(STATUS=status)

    async def watchdog(self, interval: float) -> None:
        """Send `WATCHDOG=1` every `interval` seconds until cancelled.

        It runs on the event loop on purpose: a loop blocked by a stuck call stops the pings,
        and systemd then restarts the process, which is the point of a watchdog.
        """
        while True:
            self.notify(WATCHDOG="1")
            await asyncio.sleep(interval)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when not asked for.

    Like `sd_watchdog_enabled()`, a `WATCHDOG_PID` naming another process means the request
    is for that process (a wrapper script, say), not this one.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2 / 1_000_000


def _socket_address(address: str) -> str | bytes | None:
    if address.startswith("@"):
        # Abstract namespace: a leading NUL byte, and no trailing one.
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    return None  # e.g. systemd 256's vsock: addresses, which this minimal client does not speak


def _one_line(value: str) -> str:
    # A newline would start a new KEY=value pair: a status text must not forge one.
    return value.replace("\r", " ").replace("\n", " ")
