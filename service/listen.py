"""The setting to blame when a server of ours cannot listen where the settings say."""

from __future__ import annotations

import errno
import socket

from .errors import ConfigError

__all__ = ["listen_error", "listening_socket"]


def listen_error(
    error: OSError, host: str, port: int, *, host_setting: str, port_setting: str, in_use: str = ""
) -> ConfigError:
    """Why a server cannot listen on `host`:`port`, naming the setting to change.

    Only binding tells: a name that does not resolve, an address of another machine, a port
    another process holds or one below 1024 without the privilege. `in_use` adds a hint to the
    port-in-use reason.
    """
    if isinstance(error, socket.gaierror):
        return ConfigError(host_setting, f"{host!r} does not resolve")
    if error.errno == errno.EADDRNOTAVAIL:
        return ConfigError(host_setting, f"{host!r} is not an address of this machine")
    if error.errno == errno.EADDRINUSE:
        return ConfigError(port_setting, f"{port} is in use on {host}{in_use}")
    if error.errno == errno.EACCES:
        return ConfigError(port_setting, f"{port} needs privileges this process lacks")
    return ConfigError(port_setting, f"cannot listen on {host}:{port}: {error.strerror}")


def listening_socket(
    host: str, port: int, *, host_setting: str, port_setting: str
) -> socket.socket:
    """A socket listening on `host`:`port`; `ConfigError` naming the setting if it cannot be."""
    try:
        return socket.create_server((host, port), family=_family(host))
    except OSError as exc:
        raise listen_error(
            exc, host, port, host_setting=host_setting, port_setting=port_setting
        ) from exc


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
