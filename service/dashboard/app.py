"""The dashboard's web app: the routes, and the checks every request passes.

Every state change is a POST that passes `_checked_form` (read-only mode, CSRF); every page is
rendered with Jinja2's autoescaping, stored text first made printable (control characters and
bidirectional overrides written as escapes) and cut where a list shows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..admin.queue import QueueAdmin
from ..connection import connect_redis
from ..keys import QueueKeys
from ..settings import DashboardSettings
from ..status import is_task_id
from ..store import QueueStore
from . import pages, security
from .filters import DeadFilter
from .templates import environment

__all__ = ["create_app"]

_HERE: Final = Path(__file__).parent
_NOTICES: Final = {
    "requeued": "Requeued {n} dead letter(s).",
    "purged": "Purged {n} dead letter(s).",
    "gone": "That dead letter no longer exists.",
    "cancelled": "Cancelled: that email will not be sent.",
    **{
        f"not_cancelled_{state}": f"Not cancelled: the task is {state}."
        for state in ("sending", "sent", "dead", "cancelled", "unknown")
    },
}


def create_app(settings: DashboardSettings) -> Starlette:
    """The dashboard for the queue of `settings`."""
    dashboard = _Dashboard(settings)
    routes = [
        Route("/", dashboard.overview),
        Route("/workers", dashboard.workers),
        Route("/dead", dashboard.dead_list),
        Route("/dead/bulk", dashboard.dead_bulk_confirm, methods=["GET"]),
        Route("/dead/bulk", dashboard.dead_bulk, methods=["POST"]),
        Route("/dead/{dead_id}", dashboard.dead_one),
        Route("/dead/{dead_id}/requeue", dashboard.dead_requeue, methods=["POST"]),
        Route("/dead/{dead_id}/purge", dashboard.dead_purge, methods=["POST"]),
        Route("/scheduled", dashboard.scheduled),
        Route("/tasks/{task_id}/cancel", dashboard.cancel, methods=["POST"]),
        Route("/find", dashboard.find),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=dashboard.guard)],
        exception_handlers={HTTPException: dashboard.refused, RedisError: dashboard.no_redis},
        lifespan=dashboard.lifespan,
    )


class _Dashboard:
    """The pages and actions of one queue's dashboard, and the checks around them."""

    def __init__(self, settings: DashboardSettings) -> None:
        self._key = security.new_key()
        token = settings.dashboard_token
        self._token = token.get_secret_value() if token else None
        self._read_only = settings.dashboard_read_only
        self._keys = QueueKeys(settings.email_queue)
        self._url = settings.redis_url
        self._status_ttl = settings.task_status_ttl  # what a cancel's status record keeps
        self._templates = Jinja2Templates(env=environment(_HERE / "templates"))
        self._store: QueueStore | None = None
        self._admin: QueueAdmin | None = None

    def __repr__(self) -> str:  # the token stays out of any repr
        return f"<dashboard of {self._keys.queue!r}>"

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """One Redis client for the app's life."""
        redis = connect_redis(self._url.get_secret_value())
        self._store = QueueStore(redis, self._keys, status_ttl=self._status_ttl)
        self._admin = QueueAdmin(self._store)
        try:
            yield
        finally:
            await redis.aclose()

    @property
    def store(self) -> QueueStore:
        if self._store is None:
            raise RuntimeError("the dashboard's store is used outside the app's lifespan")
        return self._store

    @property
    def admin(self) -> QueueAdmin:
        if self._admin is None:
            raise RuntimeError("the dashboard's admin is used outside the app's lifespan")
        return self._admin

    # --- checks -------------------------------------------------------------------------------

    async def guard(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Authentication, the CSRF session cookie and the security headers, on every request."""
        host = request.headers.get("host")
        if self._token is None and not security.loopback_host(host):
            response: Response = PlainTextResponse(
                "this dashboard answers only to a loopback host name (set DASHBOARD_TOKEN to "
                "serve others)\n",
                status_code=421,
            )
        elif request.method == "POST" and not security.same_origin(
            request.headers.get("origin"), host
        ):
            response = PlainTextResponse("refused: a form from another site\n", status_code=403)
        elif self._token is not None and not security.token_matches(
            self._token, request.headers.get("authorization")
        ):
            response = PlainTextResponse(
                "authentication required\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="email dashboard", charset="UTF-8"'},
            )
        else:
            session = request.cookies.get(security.SESSION_COOKIE) or ""
            fresh = not _valid_session(session)
            request.state.session = security.new_session() if fresh else session
            response = await call_next(request)
            if fresh:
                response.set_cookie(
                    security.SESSION_COOKIE, request.state.session, httponly=True, samesite="strict"
                )
        response.headers.update(security.SECURITY_HEADERS)
        return response

    async def _checked_form(self, request: Request) -> dict[str, str]:
        """The form of a state change, once read-only mode and the CSRF token allow it."""
        if self._read_only:
            raise HTTPException(403, "read-only mode: changes are turned off")
        form = await request.form()
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        session = request.cookies.get(security.SESSION_COOKIE)
        if not security.csrf_valid(self._key, session, fields.get("csrf")):
            raise HTTPException(
                403, "refused: the form's CSRF token is missing or wrong; reload the page"
            )
        return fields

    async def refused(self, request: Request, exc: Exception) -> Response:
        """An HTTPException as a page (or plain text before the session exists)."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        if not hasattr(request.state, "session"):
            return PlainTextResponse(f"{detail}\n", status_code=status)
        return self._render(request, "missing.html", status_code=status, what=None, detail=detail)

    async def no_redis(self, request: Request, exc: Exception) -> Response:
        """Redis failed: 503, naming the error's kind only (its text may name the server)."""
        detail = f"Redis did not answer ({type(exc).__name__}); try again in a moment"
        if not hasattr(request.state, "session"):
            return PlainTextResponse(f"{detail}\n", status_code=503)
        return self._render(request, "missing.html", status_code=503, what=None, detail=detail)

    def _render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        context.update(
            queue=self._keys.queue,
            read_only=self._read_only,
            csrf=security.csrf_token(self._key, request.state.session),
            path=request.url.path,
            notice=_notice(request),
        )
        return self._templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- pages --------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """Sizes, workers, the last hour's charts and the send limits."""
        data = await pages.overview(self.admin, self.store)
        return self._render(request, "overview.html", page=data, live=True)

    async def workers(self, request: Request) -> Response:
        """Heartbeats and consumers."""
        beats, consumers = await pages.workers(self.admin, self.store)
        return self._render(request, "workers.html", beats=beats, consumers=consumers, live=True)

    async def dead_list(self, request: Request) -> Response:
        """A page of dead letters, newest first, filtered."""
        wanted = DeadFilter.from_query(request.query_params)
        before = _stream_id(request.query_params.get("before", "+"), allow="+(")
        data = await pages.dead_page(self.admin, self.store, before=before, wanted=wanted)
        return self._render(
            request, "dead_list.html", page=data, wanted=wanted, scan_limit=pages.SCAN_LIMIT
        )

    async def dead_one(self, request: Request) -> Response:
        """One dead letter; its bodies with ?bodies=1."""
        letter = await self.admin.dead_letter(_stream_id(request.path_params["dead_id"]))
        if letter is None:
            return self._render(request, "missing.html", status_code=404, what="dead letter")
        bodies = request.query_params.get("bodies") == "1"
        return self._render(
            request, "dead_one.html", letter=letter, task=letter.task, bodies=bodies
        )

    async def scheduled(self, request: Request) -> Response:
        """Delayed tasks in due order."""
        from_ms = _int(request.query_params.get("from"), 0)
        skip = _int(request.query_params.get("skip"), 0)
        data = await pages.scheduled_page(self.store, from_ms=from_ms, skip=skip)
        return self._render(request, "scheduled.html", page=data)

    async def find(self, request: Request) -> Response:
        """A task by id or tag."""
        query = request.query_params.get("q", "")
        found = await pages.find(self.admin, self.store, query) if query.strip() else None
        return self._render(
            request, "find.html", found=found, query=query, scan_limit=pages.SCAN_LIMIT
        )

    async def dead_bulk_confirm(self, request: Request) -> Response:
        """The confirmation of a bulk action: how many letters it will take."""
        action = _bulk_action(request.query_params.get("action"))
        wanted = DeadFilter.from_query(request.query_params)
        count, until = await self.admin.count_matching(None if wanted.empty else wanted)
        return self._render(
            request, "dead_bulk.html", action=action, wanted=wanted, count=count, until=until
        )

    # --- actions (POST) -----------------------------------------------------------------------

    async def dead_requeue(self, request: Request) -> Response:
        """Requeue one dead letter."""
        await self._checked_form(request)
        dead_id = _stream_id(request.path_params["dead_id"])
        requeued = await self.admin.requeue([dead_id])
        if requeued.get(dead_id) is None:
            return _redirect("/dead", notice="gone")
        return _redirect("/dead", notice="requeued", n=1)

    async def dead_purge(self, request: Request) -> Response:
        """Purge one dead letter."""
        await self._checked_form(request)
        purged = await self.admin.purge([_stream_id(request.path_params["dead_id"])])
        return _redirect("/dead", notice="purged" if purged else "gone", n=purged)

    async def cancel(self, request: Request) -> Response:
        """Cancel a task that is queued, scheduled or waiting for a retry."""
        fields = await self._checked_form(request)
        task_id = request.path_params["task_id"]
        if not is_task_id(task_id):
            raise HTTPException(400, "not a task id")
        result = await self.store.cancel(task_id)
        notice = "cancelled" if result.cancelled else f"not_cancelled_{result.was}"
        if fields.get("back") == "find":
            return _redirect("/find", q=task_id, notice=notice)
        return _redirect("/scheduled", notice=notice)

    async def dead_bulk(self, request: Request) -> Response:
        """Requeue or purge the letters a confirmation counted (those up to its `until`)."""
        fields = await self._checked_form(request)
        action = _bulk_action(fields.get("action"))
        wanted = DeadFilter.from_query(fields)
        until = _stream_id(fields.get("until", ""))
        run = self.admin.requeue_all if action == "requeue" else self.admin.purge_all
        result = await run(matching=None if wanted.empty else wanted, until=until)
        notice = "requeued" if action == "requeue" else "purged"
        return _redirect("/dead", notice=notice, n=result.done)


def _notice(request: Request) -> str | None:
    template = _NOTICES.get(request.query_params.get("notice", ""))
    return template.format(n=_int(request.query_params.get("n"), 0)) if template else None


def _redirect(path: str, **query: object) -> Response:
    return RedirectResponse(f"{path}?{urlencode(query)}", status_code=303)


def _stream_id(value: object, allow: str = "") -> str:
    """A stream id from a URL or form (400 for anything else)."""
    text = value if isinstance(value, str) else ""
    core = text[1:] if text[:1] in allow and text[:1] else text
    if text in ("+", "-") and text in allow:
        return text
    ms, _, seq = core.partition("-")
    if not (ms.isdigit() and seq.isdigit() and len(core) <= 41):
        raise HTTPException(400, "not a stream id")
    return text


def _bulk_action(value: object) -> str:
    if value not in ("requeue", "purge"):
        raise HTTPException(400, "action must be requeue or purge")
    return str(value)


def _int(value: str | None, default: int) -> int:
    try:
        return max(int(value or default), 0)
    except ValueError:
        return default


def _valid_session(session: str) -> bool:
    return 20 <= len(session) <= 64 and all(c.isalnum() or c in "-_" for c in session)
