"""The package's one exception tree.

Every error carries its data as attributes so callers can act on it without parsing messages,
and no message ever contains a secret (passwords, credential-bearing URLs, message bodies).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmailServiceError",
    "WireFormatError",
]


class EmailServiceError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(EmailServiceError, ValueError):
    """A setting is missing or invalid; `variable` names the environment variable."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class WireFormatError(EmailServiceError, ValueError):
    """A stream entry cannot be decoded into a task; such entries are dead-lettered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
