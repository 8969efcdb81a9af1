"""Who may use the dashboard, and the checks on every request (pure functions, no I/O).

- Authentication: with `DASHBOARD_TOKEN` set, every request carries it, as a Bearer token
  (scripts, proxies) or as the password of Basic auth with any user name (browsers ask for it).
  Compared in constant time; never logged, never echoed.
- CSRF: each browser gets a random session cookie (HttpOnly, SameSite=Strict); every form
  carries an HMAC of it under a key made at start-up. A state change whose form lacks the
  right HMAC is refused, so another site cannot post on the user's behalf even where it could
  set a cookie.
- DNS rebinding: without a token the dashboard answers only to loopback host names, so that a
  web page whose own name an attacker points at 127.0.0.1 cannot read it or post to it.
- Origin: a POST whose Origin header names another site is refused, whatever the token.
- Headers: a strict Content-Security-Policy (no inline script or style, nothing from another
  origin, no framing) and the usual companions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "csrf_token",
    "csrf_valid",
    "loopback_host",
    "new_key",
    "new_session",
    "presented_token",
    "same_origin",
    "token_matches",
]

SESSION_COOKIE: Final = "dashboard_session"

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
    "Cache-Control": "no-store",
}


def new_key() -> bytes:
    """The key CSRF tokens are signed with, made once per process."""
    return secrets.token_bytes(32)


def new_session() -> str:
    """A fresh session id for the cookie."""
    return secrets.token_urlsafe(32)


def csrf_token(key: bytes, session: str) -> str:
    """The token a form of `session` carries."""
    return hmac.new(key, session.encode(), hashlib.sha256).hexdigest()


def csrf_valid(key: bytes, session: str | None, submitted: str | None) -> bool:
    """Whether `submitted` is the token of `session` (both must be present)."""
    if not session or not submitted:
        return False
    return hmac.compare_digest(csrf_token(key, session).encode(), submitted.encode())


def loopback_host(host_header: str | None) -> bool:
    """Whether a Host header names this machine by a loopback name or address (any port)."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8025
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """Whether a request's Origin header (absent: not a cross-site browser request) is the
    site of its Host header."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return bool(host_header) and parts.scheme in ("http", "https") and parts.netloc == host_header


def presented_token(authorization: str | None) -> str | None:
    """The secret an Authorization header presents: a Bearer token, or Basic auth's password."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer":
        return credentials or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether the header presents `expected`, compared in constant time."""
    presented = presented_token(authorization)
    if presented is None:
        return False
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )
