"""The dashboard end to end in headless Chromium, against a real Redis and a worker subprocess:
every page loads without a script or policy error, a dead letter requeued from the UI gets
delivered, a forged form is refused, hostile text renders as text, live updates arrive."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis as redis_sync
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from service import EmailTask, SyncProducer
from service.local.redis_server import RedisServer
from tests.conftest import DEAD, WorkerProcess, wait_until
from tests.integration.test_dashboard import add_dead
from tests.smtp_server import SmtpServer

from .harness import chromium_path, dashboard_process, launch

_CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    _CHROMIUM is None,
    reason="no Chromium on this machine (apt-get install chromium; .ci/run installs it as root)",
)


def enqueue(url: str, tasks: list[EmailTask], **options: object) -> list[str]:
    """Enqueue with a real `SyncProducer`: Playwright's sync API runs an event loop in this
    thread, so the asyncio producer cannot run here."""
    producer = SyncProducer.from_url(url)
    try:
        return producer.enqueue_many(tasks, **options)  # type: ignore[arg-type]
    finally:
        producer.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert _CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = launch(playwright, _CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def dashboard(worker_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with dashboard_process(worker_env, tmp_path) as url:
        yield url


@pytest.fixture
def browser_errors() -> list[str]:
    """What the browser reported as errors (a test that expects one removes it)."""
    return []


@pytest.fixture
def page(browser: Browser, browser_errors: list[str]) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    problems = browser_errors

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":  # a CSP violation or a script error is logged so
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    context.close()
    assert problems == [], "the browser reported errors"


def test_every_page_loads(
    *,
    page: Page,
    dashboard: str,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker(WORKER_HEARTBEAT_SECONDS="0.5")
    enqueue(redis_server.url, [EmailTask(to="a@example.com", subject="now", text="t")] * 3)
    [later] = enqueue(
        redis_server.url,
        [EmailTask(to="b@example.com", subject="Reminder", text="t", tags=["remind"])],
        delay=timedelta(hours=1),
    )
    dead_id = add_dead(db, subject="Lost one", tags=["welcome"])
    wait_until(lambda: len(smtp.received) == 3, 15, "the sends")
    for path, heading in [
        ("/", "Last hour"),
        ("/workers", "Workers"),
        ("/dead", "Dead letters"),
        (f"/dead/{dead_id}", "Dead letter"),
        ("/scheduled", "Scheduled"),
        (f"/find?q={later}", "Find a task"),
    ]:
        response = page.goto(dashboard + path)
        assert response is not None
        assert response.status == 200, path
        assert heading in page.inner_text("main"), path
    page.goto(dashboard + "/workers")
    assert "live" in page.inner_text("tbody")
    page.goto(dashboard + "/scheduled")
    assert "Reminder" in page.inner_text("tbody")
    page.goto(f"{dashboard}/find?q={later}")
    assert "is due" in page.inner_text("main")
    page.goto(dashboard + "/dead?tag=welcome")
    assert "Lost one" in page.inner_text("tbody")


def test_a_dead_letter_requeued_from_the_ui_is_delivered(
    *,
    page: Page,
    dashboard: str,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    smtp.behaviour.rcpt_replies["late@example.com"] = "550 5.1.1 not yet"
    start_worker()
    [task_id] = enqueue(
        redis_server.url, [EmailTask(to="late@example.com", subject="Second chance", text="t")]
    )
    wait_until(lambda: db.xlen(DEAD) == 1, 15, "the dead letter")
    smtp.behaviour.rcpt_replies.clear()  # the mailbox exists now
    page.goto(dashboard + "/dead")
    row = page.locator("tr", has_text="Second chance")
    row.get_by_role("button", name="requeue").click()
    page.wait_for_url("**/dead?notice=requeued*")
    assert "Requeued 1 dead letter(s)." in page.inner_text(".notice")
    wait_until(lambda: task_id in smtp.task_ids(), 15, "the requeued email")
    assert db.xlen(DEAD) == 0


def test_a_scheduled_email_cancelled_from_the_ui_is_never_sent(
    *,
    page: Page,
    dashboard: str,
    redis_server: RedisServer,
    db: redis_sync.Redis,
    smtp: SmtpServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    [soon, other] = [
        enqueue(redis_server.url, [EmailTask(to="a@example.com", subject=s, text="t")],
                delay=timedelta(seconds=4))[0]
        for s in ("Cancel me", "Send me")
    ]  # fmt: skip
    page.goto(dashboard + "/scheduled")
    row = page.locator("tr", has_text="Cancel me")
    row.get_by_role("button", name="cancel").click()
    assert "Cancelled: that email will not be sent." in page.inner_text(".notice")
    wait_until(lambda: other in smtp.task_ids(), 15, "the other email")
    time.sleep(1)
    assert soon not in smtp.task_ids()
    page.goto(f"{dashboard}/find?q={soon}")
    assert page.inner_text("#state") == "cancelled"


def test_bulk_purge_of_a_filter_from_the_ui(
    page: Page, dashboard: str, db: redis_sync.Redis
) -> None:
    for _ in range(3):
        add_dead(db, reason="452 try later")
    add_dead(db, reason="550 gone for good")
    page.goto(dashboard + "/dead")
    page.fill("input[name=reason]", "452")
    page.click("button:text('Filter')")
    page.click("text=Purge all matching")
    assert "purge 3 dead letter(s)" in page.inner_text("#confirm-count")
    page.click("button:text('Purge 3 dead letter(s)')")
    assert "Purged 3 dead letter(s)." in page.inner_text(".notice")
    assert db.xlen(DEAD) == 1


def test_a_forged_form_is_refused(
    page: Page, dashboard: str, db: redis_sync.Redis, browser_errors: list[str]
) -> None:
    add_dead(db)
    page.goto(dashboard + "/dead")
    page.eval_on_selector_all(
        "input[name=csrf]", "inputs => inputs.forEach(input => { input.value = 'f'.repeat(64); })"
    )
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="requeue").first.click()
    assert posted.value.status == 403
    assert "CSRF" in page.inner_text("#refusal")
    assert db.xlen(DEAD) == 1
    assert browser_errors == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]
    browser_errors.clear()


def test_another_site_cannot_post(browser: Browser, dashboard: str, db: redis_sync.Redis) -> None:
    dead_id = add_dead(db)
    context = browser.new_context()
    page = context.new_page()
    page.goto(dashboard + "/dead")  # the user has a session with the dashboard
    # A page elsewhere (another origin: a data: URL) posts a form to it without the token.
    page.goto(
        "data:text/html,<form method=post action='"
        + dashboard
        + f"/dead/{dead_id}/purge'><input name=csrf value=x></form>"
    )
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.eval_on_selector("form", "form => form.submit()")
    assert posted.value.status == 403
    context.close()
    assert db.xlen(DEAD) == 1


def test_a_hostile_subject_renders_as_text(
    page: Page, dashboard: str, db: redis_sync.Redis
) -> None:
    subject = '<img src=x onerror="window.hacked=1">'
    body = "<script>window.hacked=2</script>"
    dead_id = add_dead(db, raw_task={"to": "a@example.com", "subject": subject, "html": body})
    for path, shown in (("/dead", subject), (f"/dead/{dead_id}", subject),
                        (f"/dead/{dead_id}?bodies=1", body)):  # fmt: skip
        page.goto(dashboard + path)
        assert shown in page.inner_text("main"), path
        assert page.locator("main img").count() == 0, path
        assert page.locator("main script").count() == 0, path
        assert page.evaluate("() => window.hacked") is None, path


def test_the_overview_updates_itself(page: Page, dashboard: str, redis_server: RedisServer) -> None:
    page.goto(dashboard + "/")
    assert page.inner_text("#backlog") == "0"
    started = time.monotonic()
    enqueue(redis_server.url, [EmailTask(to="a@example.com", subject="s", text="t")] * 4)
    # No reload: live.js fetches the page again every 5 seconds and swaps its <main> in.
    wait_until(lambda: page.inner_text("#backlog") == "4", 12, "the live update")
    assert time.monotonic() - started < 12
