"""An SMTP server that accepts everything and stores each message as an `.eml` file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from .ports import free_port, port_is_free

__all__ = ["MailSink"]


class _StoreHandler:
    def __init__(self, directory: Path, refused_domain: str | None) -> None:
        self.directory = directory
        self.refused = None if refused_domain is None else "@" + refused_domain.lower()
        self.count = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.refused is not None and address.lower().endswith(self.refused):
            return "550 5.1.1 no such user here (the demo sink refuses this domain)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        name = f"{time.time_ns()}-{self.count}.eml"
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        (self.directory / name).write_bytes(header + envelope.original_content)
        return "250 OK stored"


class MailSink:
    """aiosmtpd on 127.0.0.1 (in a thread), writing what it receives to `directory`.

    It listens on `port` when that is free, else on any free port: `port` says which.
    Recipients at `refused_domain` are refused with 550 (the dashboard demo's dead letters).
    """

    def __init__(self, directory: Path, port: int, *, refused_domain: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        # Checked first: aiosmtpd takes seconds to report a port in use, and then with a traceback.
        self.port = port if port_is_free(port) else free_port()
        self._controller = Controller(
            _StoreHandler(directory, refused_domain), hostname="127.0.0.1", port=self.port
        )

    def start(self) -> None:
        """Start accepting connections."""
        self._controller.start()

    def stop(self) -> None:
        """Stop the server."""
        self._controller.stop()
