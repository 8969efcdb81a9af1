"""The web dashboard: `python -m service.dashboard` (see the README's "Dashboard").

A small server-rendered Starlette app on one queue: Overview, Workers, Dead letters, Scheduled
and Find a task. Every Redis command goes through `service.store`; every change through the
same atomic scripts as `python -m service.admin`.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
