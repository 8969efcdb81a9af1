"""TCP ports on 127.0.0.1: a free one, and whether a given one is."""

from __future__ import annotations

import socket

__all__ = ["free_port", "port_is_free"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now."""
    with socket.socket() as sock:
        # As servers do (redis-server, asyncio): connections of a server that just stopped,
        # left in TIME_WAIT, do not keep the port from a new one; a live listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
