"""`python -m service.dashboard`: serve the dashboard of `EMAIL_QUEUE` on `REDIS_URL`.

Listens on `DASHBOARD_HOST`:`DASHBOARD_PORT` (127.0.0.1:8025 by default); anywhere but loopback
needs `DASHBOARD_TOKEN`. A bad setting exits 2 with one line naming it.
"""

from __future__ import annotations

import sys

import uvicorn

from ..errors import ConfigError
from ..listen import listening_socket
from ..settings import DashboardSettings, load_settings, redact_url
from .app import create_app


def main() -> int:
    """Serve until interrupted; return the exit code."""
    try:
        settings = load_settings(DashboardSettings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if notice := settings.local_stack_notice():
        print(notice, file=sys.stderr)
    host, port = settings.dashboard_host, settings.dashboard_port
    try:  # bound before anything is said: a busy port is a bad setting, not a crash
        listener = listening_socket(
            host, port, host_setting="DASHBOARD_HOST", port_setting="DASHBOARD_PORT"
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"dashboard: http://{shown_host}:{port}/ (queue {settings.email_queue!r} on "
        f"{redact_url(settings.redis_url.get_secret_value())}"
        f"{', read-only' if settings.dashboard_read_only else ''}"
        f"{', token required' if settings.dashboard_token else ''})",
        flush=True,
    )
    config = uvicorn.Config(
        create_app(settings), log_level="warning", access_log=False, server_header=False
    )
    uvicorn.Server(config).run(sockets=[listener])
    return 0


if __name__ == "__main__":
    sys.exit(main())
