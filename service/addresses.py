"""Where the service connects, checked before it tries: host names and Redis URLs.

redis-py reads a URL lazily and leniently: a bad query value fails when the client is built, an
option meant for another kind of connection (`ssl_*` on `redis://`) only at the first connect,
a database that is not a number never (it quietly uses 0), and a CA file that does not exist
fails every connect the way an unreachable server does, so it is retried forever. Its query
options also win over the keyword arguments `connect_redis` gives. The checks here refuse all
of that up front, in words that never repeat the URL (it may hold a password) or a value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, parse_qs, urlsplit

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, SSLConnection, parse_url
from redis.exceptions import RedisError

__all__ = ["REDIS_URL_OPTIONS", "host_problem", "redis_tls_problem", "redis_url_problem"]

_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_problem(  # noqa: PLR0911 - one return per way a host can be wrong, in order
    host: str, *, port_setting: str | None = None
) -> str | None:
    """Why `host` is not a host name or IP address a resolver takes, or None.

    `port_setting` names the variable that holds the port, for the hint when `host` has one.
    """
    if not host.strip():
        return "is empty"
    if any(char.isspace() or not char.isprintable() for char in host):
        return "contains a space or a control character"
    if "://" in host:
        return "must be a host name, not a URL"
    if host.startswith("["):
        return "must be an IPv6 address without brackets"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if ":" in host:
        return "must not carry a port" + (f" (set {port_setting})" if port_setting else "")
    try:
        ascii_host = host.encode("idna").decode("ascii")  # internationalized names too
    except UnicodeError:
        return "is not a valid host name"
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "is not a valid host name"
    return None


def redis_url_problem(url: str, *, min_socket_timeout: float) -> str | None:
    """Why a client could not use `url`, or None. No I/O: see `redis_tls_problem` for files.

    `min_socket_timeout` is the floor of a `?socket_timeout=` (the longest blocking read).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket
        return "is not a valid URL"
    if parts.scheme not in _SCHEMES:
        return "must start with redis://, rediss:// or unix://"
    if problem := _location_problem(parts):
        return problem
    options = parse_qs(parts.query)  # as redis-py reads it: an option without a value is dropped
    if "db" in options and parts.scheme != "unix" and parts.path not in ("", "/"):
        return "gives the database twice: in its path and as ?db="
    for name, values in options.items():
        if problem := _option_problem(name, values, parts.scheme, min_socket_timeout):
            return problem
    return None


def _location_problem(parts: SplitResult) -> str | None:  # noqa: PLR0911 - as host_problem
    if parts.scheme == "unix":
        if parts.hostname:
            return "takes a socket path, not a host: unix:///path/to/redis.sock"
        return None if parts.path else "needs a socket path: unix:///path/to/redis.sock"
    if not parts.hostname:
        return "has no host"
    if problem := host_problem(parts.hostname):
        return f"its host {problem}"
    try:
        port = parts.port  # urlsplit checks the port lazily, on access
    except ValueError:
        port = 0
    if port == 0:
        return "has an invalid port"
    if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]+", parts.path):
        return "its database (the path after the host) must be a number, as in /0"
    return None


# --- Query options ------------------------------------------------------------------------------
# The options a REDIS_URL may carry, each with the schemes it applies to and a check of its value
# (None: any value). redis-py hands any other name to the connection class, which fails at the
# first connect; `_PINNED` ones it knows, but they would change what this package relies on.

_Check = Callable[[str], str | None]  # a value -> why it is wrong, or None

_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_TCP: Final = frozenset({"redis", "rediss"})
_TLS: Final = frozenset({"rediss"})
_BOOLEAN_WORDS: Final = frozenset({"1", "T", "TRUE", "Y", "YES", "0", "F", "FALSE", "N", "NO"})


@dataclass(frozen=True)
class _Option:
    schemes: frozenset[str]
    check: _Check | None = None


def _seconds_above(floor: float, value: str) -> str | None:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds) and seconds > floor:
        return None
    return f"must be a number of seconds above {floor:g}"


def _whole_number(value: str) -> str | None:
    try:
        number = int(value)
    except ValueError:
        number = -1
    return None if number >= 0 else "must be a whole number (0 or more)"


def _boolean(value: str) -> str | None:
    # redis-py takes any word outside its false ones as true: "maybe" would switch it on.
    return None if value.upper() in _BOOLEAN_WORDS else "must be true or false"


def _client_name(value: str) -> str | None:
    # Redis refuses spaces and characters outside '!'..'~' in CLIENT SETNAME, at each connect.
    return None if all("!" <= char <= "~" for char in value) else "must be ASCII without spaces"


def _cert_reqs(value: str) -> str | None:
    return None if value in ("none", "optional", "required") else "must be none|optional|required"


def _tls_version(value: str) -> str | None:
    try:
        version = int(value)
    except ValueError:
        version = 0
    if version in {member.value for member in ssl.TLSVersion}:
        return None
    return "must be a TLS version number: 771 (TLS 1.2) or 772 (TLS 1.3)"


def _verify_flags(value: str) -> str | None:
    try:
        URL_QUERY_ARGUMENT_PARSERS["ssl_include_verify_flags"](value)
    except ValueError:
        return "must be names of ssl.VerifyFlags, separated by commas (VERIFY_X509_STRICT...)"
    return None


def _ciphers(value: str) -> str | None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(value)
    except ssl.SSLError:
        return "selects no cipher OpenSSL knows"
    return None


def _ca_data(value: str) -> str | None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=value)
    except (ssl.SSLError, ValueError):
        return "must be PEM certificates"
    return None


REDIS_URL_OPTIONS: Final[dict[str, _Option]] = {
    "db": _Option(_SCHEMES, _whole_number),
    "username": _Option(_SCHEMES),
    "password": _Option(_SCHEMES),
    "client_name": _Option(_SCHEMES, _client_name),
    "socket_timeout": _Option(_SCHEMES),  # checked against min_socket_timeout
    "socket_connect_timeout": _Option(_SCHEMES, lambda value: _seconds_above(0, value)),
    "health_check_interval": _Option(_SCHEMES, _whole_number),
    "socket_keepalive": _Option(_TCP, _boolean),
    "ssl_cert_reqs": _Option(_TLS, _cert_reqs),
    "ssl_check_hostname": _Option(_TLS, _boolean),
    "ssl_ca_certs": _Option(_TLS),  # files and directories: see redis_tls_problem
    "ssl_ca_path": _Option(_TLS),
    "ssl_ca_data": _Option(_TLS, _ca_data),
    "ssl_certfile": _Option(_TLS),
    "ssl_keyfile": _Option(_TLS),
    "ssl_password": _Option(_TLS),
    "ssl_min_version": _Option(_TLS, _tls_version),
    "ssl_ciphers": _Option(_TLS, _ciphers),
    "ssl_include_verify_flags": _Option(_TLS, _verify_flags),
    "ssl_exclude_verify_flags": _Option(_TLS, _verify_flags),
}

_PINNED: Final = {
    "protocol": "the service reads RESP2 replies",
    "legacy_responses": "the service reads RESP2 replies",
    "decode_responses": "the service reads replies as bytes",
    "encoding": "the service reads replies as bytes",
    "encoding_errors": "the service reads replies as bytes",
    "max_connections": "a worker opens the connections it needs",
}


def _option_problem(
    name: str, values: list[str], scheme: str, min_socket_timeout: float
) -> str | None:
    # Names are shown with repr(): one line, whatever they hold. Values are never shown.
    if len(values) > 1:
        return f"gives option {name!r} {len(values)} times"
    if name in _PINNED:
        return f"option {name} cannot be set: {_PINNED[name]}"
    option = REDIS_URL_OPTIONS.get(name)
    if option is None:
        return f"has an unsupported option {name!r} (config/example.env lists them)"
    if scheme not in option.schemes:
        where = " and ".join(f"{each}://" for each in sorted(option.schemes))
        return f"option {name} applies only to {where} URLs"
    if name == "socket_timeout":
        problem = _seconds_above(min_socket_timeout, values[0])
        if problem:
            problem += " (the longest blocking read)"
    else:
        problem = option.check(values[0]) if option.check else None
    return None if problem is None else f"option {name} {problem}"


_TLS_PATHS: Final[dict[str, Callable[[str], bool]]] = {
    "ssl_ca_certs": os.path.isfile,
    "ssl_certfile": os.path.isfile,
    "ssl_keyfile": os.path.isfile,
    "ssl_ca_path": os.path.isdir,
}


def redis_tls_problem(url: str) -> str | None:
    """Why the TLS options of a `rediss://` URL do not load as redis-py loads them, or None.

    Reads the files they name; call it after `redis_url_problem` found nothing.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    for name, values in parse_qs(parts.query).items():
        # A path is no secret, and the one thing an operator needs to see to fix this.
        exists = _TLS_PATHS.get(name)
        if exists is not None and not (exists(values[0]) and os.access(values[0], os.R_OK)):
            return f"option {name}: {values[0]!r} does not exist or cannot be read"
    # redis-py's own reading of the URL and its own TLS context: what each connect will do.
    options: dict[str, Any] = dict(parse_url(url))
    del options["connection_class"]
    try:
        SSLConnection(**options).ssl_context.get()
    except (OSError, ValueError, RedisError) as exc:  # ssl.SSLError is an OSError
        return f"its TLS options do not load: {exc}"
    return None
