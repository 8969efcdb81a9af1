"""sd_notify against real unix datagram sockets, as systemd would listen on them."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.worker.notify import Notifier, watchdog_interval


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # what NOTIFY_SOCKET would hold

    def receive(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(8192).decode()

    def drain(self) -> list[str]:
        """Every message waiting right now."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(8192).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def named(tmp_path: Path) -> Iterator[Listener]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield Listener(sock, path)


@pytest.fixture
def abstract() -> Iterator[Listener]:
    name = f"email-worker-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        yield Listener(sock, f"@{name}")


@pytest.mark.parametrize("kind", ["named", "abstract"])
def test_ready_stopping_and_status_arrive_as_single_datagrams(
    kind: str, request: pytest.FixtureRequest
) -> None:
    listener: Listener = request.getfixturevalue(kind)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    assert notifier.ready("delivering queue emails")
    assert listener.receive() == "READY=1\nSTATUS=delivering queue emails"
    assert notifier.stopping()
    assert listener.receive() == "STOPPING=1\nSTATUS=stopping: draining in-flight sends"
    assert notifier.status("waiting for Redis")
    assert listener.receive() == "STATUS=waiting for Redis"


def test_a_status_cannot_forge_another_field(named: Listener) -> None:
    Notifier(named.address).status("x\nREADY=1")
    assert named.receive() == "STATUS=x READY=1"


def test_unset_socket_does_nothing() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready("x")


def test_unsupported_address_does_nothing() -> None:
    assert not Notifier("vsock:2:1234").enabled


def test_a_missing_socket_is_reported_once_and_never_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert not notifier.notify(WATCHDOG="1")
    assert not notifier.notify(WATCHDOG="1")
    assert capsys.readouterr().out.count("notify_failed") == 1


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


async def test_watchdog_pings_at_its_interval_and_stops_while_the_loop_is_blocked(
    named: Listener,
) -> None:
    notifier = Notifier(named.address)
    pinger = asyncio.create_task(notifier.watchdog(0.05))
    await asyncio.sleep(0.5)
    pings = named.drain()
    assert set(pings) == {"WATCHDOG=1"}
    assert 7 <= len(pings) <= 12  # ~10 at 50 ms; slack for a busy 2-core machine

    time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop on purpose, as a stuck call would
    assert named.drain() == [], "a blocked event loop must stop the pings"

    await asyncio.sleep(0.2)
    assert named.drain(), "pings resume once the loop runs again"
    pinger.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pinger
