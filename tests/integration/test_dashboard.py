"""The dashboard over HTTP (Starlette's TestClient) against a real redis-server: every page,
authentication, CSRF refusal, read-only mode and hostile stored text."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta

import orjson
import pytest
import redis as redis_sync
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.testclient import TestClient

from service import EmailTask
from service.dashboard import create_app
from service.errors import RedisFull
from service.keys import QueueKeys
from service.local.ports import free_port
from service.local.redis_server import RedisServer
from service.settings import DashboardSettings
from service.store import QueueStore
from service.store.history import MinuteCounts
from service.wire import dead_entry, encode_entry
from tests.conftest import (
    DEAD,
    DELAYED,
    STREAM,
    WorkerProcess,
    as_entries,
    enqueue,
    wait_until,
)
from tests.smtp_server import SmtpServer

TOKEN = "a-test-token-of-enough-length"  # noqa: S105 - a test secret
HOSTILE = '<script>alert("x")</script>\x1b[2J\u202e<img src=x onerror=alert(1)>'


def _settings(url: str, **overrides: object) -> DashboardSettings:
    return DashboardSettings(redis_url=SecretStr(url), **overrides)  # type: ignore[arg-type]


@pytest.fixture
def client(redis_server: RedisServer, db: redis_sync.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(redis_server.url)), base_url="http://127.0.0.1") as c:
        yield c


def add_dead(
    db: redis_sync.Redis,
    *,
    to: str = "user@example.com",
    subject: str = "Hello",
    reason: str = "550 5.1.1 no such user",
    tags: list[str] | None = None,
    text: str = "the text body",
    raw_task: Mapping[str, object] | None = None,
) -> str:
    """A dead letter as the worker writes it; returns its id. `raw_task` is stored as the task
    without validation: anyone who can write to Redis can write anything there."""
    task = EmailTask(to=to, subject="s" if raw_task else subject, text=text, tags=tags or [])
    task_id = f"{time.time_ns():032x}"[-32:]
    fields = encode_entry(task, task_id, time.time_ns() // 1_000_000)
    if raw_task is not None:
        fields["task"] = orjson.dumps(raw_task)
    record = dead_entry(
        {k.encode(): v for k, v in fields.items()},
        reason=reason,
        entry_id="1-0",
        deliveries=1,
        tries=1,
        consumer="w1",
    )
    return str(db.xadd(DEAD, record).decode())  # type: ignore[union-attr, arg-type]


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_overview_counts_and_security_headers(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    enqueue(redis_server.url, [EmailTask(to="a@example.com", subject="s", text="t")] * 3)
    enqueue(
        redis_server.url,
        [EmailTask(to="b@example.com", subject="later", text="t")],
        delay=timedelta(hours=1),
    )
    add_dead(db)
    response = client.get("/")
    assert response.status_code == 200
    page = response.text
    assert re.search(r'id="backlog">3<', page)
    assert re.search(r'id="delayed">1<', page)
    assert re.search(r'id="dead">1<', page)
    assert re.search(r'id="live-workers">0<', page)
    assert 'id="lanes"' not in page  # every task is normal: no lanes to tell apart
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert "httponly" in response.headers["set-cookie"].lower()
    assert "samesite=strict" in response.headers["set-cookie"].lower()
    assert "<script>" not in page.replace('<script src="/static/live.js" defer></script>', "")


def test_overview_shows_each_lane_backlog_once_there_are_priorities(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    tasks = [EmailTask(to="a@example.com", subject="s", text="t", priority="low")] * 2
    enqueue(redis_server.url, [*tasks, EmailTask(to="a@example.com", subject="s", text="t")])
    page = client.get("/").text
    assert re.search(r'id="backlog">3<', page)
    assert re.search(r'id="lanes">high 0 · normal 1 · low 2<', page)


def test_overview_shows_the_minute_history(client: TestClient, redis_server: RedisServer) -> None:
    minute = int(time.time() // 60)
    with redis_sync.Redis.from_url(redis_server.url) as db:
        db.hset(f"{{emails}}:minute:{minute}", mapping={"sent": 7, "failed": 2})
    page = client.get("/").text
    assert re.search(r'id="sent-hour">7<', page)
    assert "peak 7/min" in page


def test_workers_page_lists_heartbeats_and_pending(
    client: TestClient, db: redis_sync.Redis
) -> None:
    now = time.time()
    record = {"consumer": "w-<b>1</b>", "host": "h", "pid": 42, "state": "sending",
              "state_since": now, "started_at": now, "beat_at": now, "interval_s": 10,
              "outcomes": {"sent": 5, "retry": 1}}  # fmt: skip
    db.hset("{emails}:workers", "w-<b>1</b>", orjson.dumps(record))
    page = client.get("/workers").text
    assert "w-&lt;b&gt;1&lt;/b&gt;" in page
    assert "<b>1</b>" not in page
    assert "sending" in page
    assert ">live<" in page


def test_dead_letters_filter_by_reason_domain_and_tag(
    client: TestClient, db: redis_sync.Redis
) -> None:
    add_dead(db, to="a@gmail.example", reason="550 no such user", tags=["welcome"])
    add_dead(db, to="b@corp.example", reason="552 mailbox full", tags=["invoice"])
    add_dead(db, to="Name <c@gmail.example>", reason="554 rejected", tags=["welcome"])
    every = client.get("/dead").text
    assert every.count('class="reason"') == 3
    assert client.get("/dead?reason=FULL").text.count('class="reason"') == 1
    assert client.get("/dead?domain=gmail.example").text.count('class="reason"') == 2
    assert (
        client.get("/dead?domain=@gmail.example&tag=welcome&reason=554").text.count(
            'class="reason"'
        )
        == 1
    )
    assert "No dead letters match" in client.get("/dead?tag=nothing").text


def test_dead_letters_page_by_stream_id(client: TestClient, db: redis_sync.Redis) -> None:
    ids = [add_dead(db, subject=f"s{i}") for i in range(60)]

    def listed(entry_id: str, page: str) -> bool:
        # By its link: ids added within one millisecond differ in their sequence only, and
        # "...-1" is a prefix of "...-10".
        return f'href="/dead/{entry_id}"' in page

    first = client.get("/dead").text
    assert listed(ids[-1], first)
    assert listed(ids[10], first)
    assert not listed(ids[9], first)
    older = re.search(r'href="/dead\?before=([^"&]+)"', first)
    assert older
    second = client.get(f"/dead?before={older.group(1)}").text
    assert listed(ids[9], second)
    assert listed(ids[0], second)
    assert not listed(ids[10], second)


def test_inspect_one_with_bodies_on_demand(client: TestClient, db: redis_sync.Redis) -> None:
    dead_id = add_dead(db, subject="Invoice 7", text="secret body text")
    page = client.get(f"/dead/{dead_id}").text
    assert "Invoice 7" in page
    assert "secret body text" not in page
    assert "secret body text" in client.get(f"/dead/{dead_id}?bodies=1").text
    assert client.get("/dead/1-0").status_code == 404
    assert client.get("/dead/not-an-id").status_code == 400


def test_requeue_and_purge_one_need_the_csrf_token(
    client: TestClient, db: redis_sync.Redis
) -> None:
    first, second = add_dead(db), add_dead(db)
    token = csrf_of(client.get("/dead").text)
    refused = client.post(f"/dead/{first}/requeue", data={"csrf": "0" * 64})
    assert refused.status_code == 403
    assert "CSRF" in refused.text
    assert client.post(f"/dead/{first}/requeue").status_code == 403
    assert db.xlen(DEAD) == 2
    done = client.post(f"/dead/{first}/requeue", data={"csrf": token}, follow_redirects=False)
    assert done.status_code == 303
    assert db.xlen(DEAD) == 1
    assert db.xlen(STREAM) == 1
    client.post(f"/dead/{second}/purge", data={"csrf": token})
    assert db.xlen(DEAD) == 0
    assert db.xlen(STREAM) == 1


def test_a_token_from_another_session_is_refused(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    dead_id = add_dead(db)
    token = csrf_of(client.get("/dead").text)
    app = client.app
    with TestClient(app, base_url="http://127.0.0.1") as other:
        other.get("/dead")  # a session of its own
        assert other.post(f"/dead/{dead_id}/requeue", data={"csrf": token}).status_code == 403
    assert db.xlen(DEAD) == 1


def test_bulk_requeue_of_a_filter_confirms_the_count_and_keeps_to_it(
    client: TestClient, db: redis_sync.Redis
) -> None:
    for _ in range(3):
        add_dead(db, reason="452 try later")
    add_dead(db, reason="550 no such user")
    confirm = client.get("/dead/bulk?action=requeue&reason=452").text
    assert re.search(r"requeue <strong>3</strong> dead letter", confirm)
    until = re.search(r'name="until" value="([0-9-]+)"', confirm)
    assert until
    add_dead(db, reason="452 try later")  # after the confirmation: left alone
    form = {"csrf": csrf_of(confirm), "action": "requeue", "reason": "452", "until": until.group(1)}
    done = client.post("/dead/bulk", data=form)
    assert "Requeued 3 dead letter(s)." in done.text
    reasons = [f[b"dead_reason"] for _, f in as_entries(db.xrange(DEAD))]
    assert reasons == [b"550 no such user", b"452 try later"]
    assert db.xlen(STREAM) == 3


def test_bulk_purge_without_a_filter(client: TestClient, db: redis_sync.Redis) -> None:
    for _ in range(5):
        add_dead(db)
    confirm = client.get("/dead/bulk?action=purge").text
    assert re.search(r"purge <strong>5</strong> dead letter", confirm)
    until = re.search(r'name="until" value="([0-9-]+)"', confirm)
    assert until
    form = {"csrf": csrf_of(confirm), "action": "purge", "until": until.group(1)}
    assert "Purged 5 dead letter(s)." in client.post("/dead/bulk", data=form).text
    assert db.xlen(DEAD) == 0


def test_read_only_mode_shows_no_forms_and_refuses_changes(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    dead_id = add_dead(db)
    app = create_app(_settings(redis_server.url, dashboard_read_only=True))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/dead").text
        assert "read-only" in page
        assert '<form method="post"' not in page
        assert 'method="post"' not in client.get(f"/dead/{dead_id}").text
        refused = client.post(f"/dead/{dead_id}/requeue", data={"csrf": "x"})
        assert refused.status_code == 403
        assert "read-only" in refused.text
    assert db.xlen(DEAD) == 1


def test_a_token_is_required_when_set(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    app = create_app(_settings(redis_server.url, dashboard_token=TOKEN))
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    wrong = base64.b64encode(b"anyone:wrong-token-wrong-token").decode()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        refused = client.get("/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert TOKEN not in refused.text
        assert client.get("/static/live.js").status_code == 401
        assert client.get("/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_hostile_stored_text_is_escaped_everywhere(
    client: TestClient, db: redis_sync.Redis
) -> None:
    long_reason = "5" + "x" * 100_000
    hostile_task = {"to": [HOSTILE], "subject": HOSTILE, "text": HOSTILE, "tags": ["<i>t</i>"]}
    dead_id = add_dead(db, reason=HOSTILE, raw_task=hostile_task)
    long_id = add_dead(db, reason=long_reason)
    for path in ("/dead", f"/dead/{dead_id}", f"/dead/{dead_id}?bodies=1", "/find?q=<i>t</i>",
                 "/dead?reason=<script>", "/dead/bulk?action=purge&reason=<script>"):  # fmt: skip
        page = client.get(path).text
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
        assert "\x1b" not in page, path
        assert "\u202e" not in page, path
    detail = client.get(f"/dead/{dead_id}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;\\x1b[2J\\u202e" in detail
    listing = client.get("/dead").text
    assert long_id in listing
    assert len(listing) < 20_000  # a 100,000-character reason is cut in the list
    assert "(100,001 characters)" in listing


def test_scheduled_lists_in_due_order_and_pages(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    tasks = [EmailTask(to="a@example.com", subject=f"later {i}", text="t") for i in range(55)]
    ids = [enqueue(redis_server.url, [task], delay=timedelta(minutes=5 + i))[0]
           for i, task in enumerate(tasks)]  # fmt: skip
    assert db.zcard(DELAYED) == 55
    first = client.get("/scheduled").text
    assert "(55 delayed" in first
    assert first.index(ids[0]) < first.index(ids[1])
    assert ids[50] not in first
    later = re.search(r'href="/scheduled\?from=(\d+)&amp;skip=(\d+)"', first)
    assert later
    second = client.get(f"/scheduled?from={later.group(1)}&skip={later.group(2)}").text
    assert ids[50] in second
    assert ids[54] in second
    assert ids[49] not in second


def test_find_by_task_id_and_by_tag(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    [later] = enqueue(
        redis_server.url, [EmailTask(to="a@example.com", subject="s", text="t")],
        delay=timedelta(hours=2),
    )  # fmt: skip
    add_dead(db, tags=["user:42"], reason="550 gone")
    by_id = client.get(f"/find?q={later}").text
    assert "is due" in by_id
    assert later in by_id
    by_tag = client.get("/find?q=user:42").text
    assert "550 gone" in by_tag
    assert "None among" in client.get("/find?q=user:43").text


def test_workers_write_the_minute_history_the_overview_draws(
    client: TestClient,
    redis_server: RedisServer,
    smtp: SmtpServer,
    start_worker: Callable[..., WorkerProcess],
    db: redis_sync.Redis,
) -> None:
    smtp.behaviour.rcpt_replies["bad@example.com"] = "550 5.1.1 no such user"
    worker = start_worker(WORKER_HEARTBEAT_SECONDS="0.2")
    good = EmailTask(to="good@example.com", subject="s", text="t")
    enqueue(redis_server.url, [good, good, EmailTask(to="bad@example.com", subject="s", text="t")])
    wait_until(lambda: len(smtp.received) == 2 and db.xlen(DEAD) == 1, 15, "the sends")

    def history() -> list[dict[bytes, bytes]]:
        return [db.hgetall(key) for key in db.keys("{emails}:minute:*")]  # type: ignore[misc]

    wait_until(lambda: sum(int(h.get(b"sent", 0)) for h in history()) == 2, 5, "the history")
    minutes = history()
    assert sum(int(h.get(b"failed", 0)) for h in minutes) == 1
    assert sum(int(h.get(b"dead", 0)) for h in minutes) == 1
    assert any(key.startswith(b"latency_ms_max:") for h in minutes for key in h)
    assert all(0 < db.ttl(key) <= 2 * 3600 for key in db.keys("{emails}:minute:*"))
    page = client.get("/").text
    assert re.search(r'id="sent-hour">2<', page)
    assert re.search(r'id="live-workers">1<', page)
    assert worker.stop() == 0


def test_without_a_token_only_loopback_host_names_are_served(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    # DNS rebinding: a page at attacker.example, its name now pointing at 127.0.0.1.
    refused = client.get("/", headers={"host": "attacker.example:8025"})
    assert refused.status_code == 421
    assert client.get("/", headers={"host": "localhost:8025"}).status_code == 200
    assert client.get("/", headers={"host": "[::1]:8025"}).status_code == 200
    app = create_app(_settings(redis_server.url, dashboard_token=TOKEN))
    with TestClient(app, base_url="http://dashboard.example") as remote:
        answered = remote.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answered.status_code == 200


def test_a_post_from_another_origin_is_refused(client: TestClient, db: redis_sync.Redis) -> None:
    dead_id = add_dead(db)
    token = csrf_of(client.get("/dead").text)
    refused = client.post(
        f"/dead/{dead_id}/purge",
        data={"csrf": token},
        headers={"origin": "http://attacker.example"},
    )
    assert refused.status_code == 403
    assert db.xlen(DEAD) == 1
    same = client.post(
        f"/dead/{dead_id}/purge", data={"csrf": token}, headers={"origin": "http://127.0.0.1"}
    )
    assert same.status_code == 200
    assert db.xlen(DEAD) == 0


async def test_the_minute_history_is_all_or_nothing_at_maxmemory(redis: Redis) -> None:
    store = QueueStore(redis, QueueKeys("emails"))
    now = int(time.time() // 60)
    counts = {now: MinuteCounts(sent=2, latency_ms_sum=30), now + 1: MinuteCounts(failed=1)}
    await redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(RedisFull):
            await store.add_minutes("w1", counts, {now: 20})
    finally:
        await redis.config_set("maxmemory", 0)
    assert await redis.keys("{emails}:minute:*") == []
    await store.add_minutes("w1", counts, {now: 20})
    await store.add_minutes("w2", {now: MinuteCounts(sent=1, latency_ms_sum=90)}, {now: 90})
    assert await store.minutes(now - 1, 3) == [
        MinuteCounts(),
        MinuteCounts(sent=3, latency_ms_sum=120, latency_ms_max=90),
        MinuteCounts(failed=1),
    ]
    # A key of the wrong type fails the script before its first write.
    await redis.set(f"{{emails}}:minute:{now + 2}", "not a hash")
    with pytest.raises(ResponseError):
        await store.add_minutes("w1", {now + 1: MinuteCounts(sent=5), now + 2: MinuteCounts()}, {})
    assert (await store.minutes(now + 1, 1))[0] == MinuteCounts(failed=1)
    # A minute older than the history keeps expires at once.
    await store.add_minutes("w1", {now - 121: MinuteCounts(sent=1)}, {})
    assert await store.minutes(now - 121, 1) == [MinuteCounts()]


async def test_scheduled_reads_survive_a_copy_that_does_not_unpack(redis: Redis) -> None:
    store = QueueStore(redis, QueueKeys("emails"))
    await redis.zadd(DELAYED, {"garbage": 1_000, "missing": 2_000})
    await redis.hset("{emails}:delayed:entries", "garbage", b"\xc1not msgpack")
    rows = await store.scheduled(from_ms=0, skip=0, count=10)
    assert [(r.task_id, r.due_ms, r.task_json, r.tries) for r in rows] == [
        ("garbage", 1_000, "", 0),
        ("missing", 2_000, "", 0),
    ]
    assert await store.scheduled(from_ms=1_000, skip=1, count=10) == rows[1:]
    assert await store.scheduled_one("garbage") == rows[0]
    assert await store.scheduled_one("absent") is None


def test_an_unreachable_redis_is_a_503_that_names_no_secret() -> None:
    url = f"redis://user:hunter2-secret@127.0.0.1:{free_port()}/0"
    with TestClient(create_app(_settings(url)), base_url="http://127.0.0.1") as client:
        response = client.get("/")
    assert response.status_code == 503
    assert "Redis did not answer (ConnectionError)" in response.text
    assert "hunter2" not in response.text


def test_cancel_a_scheduled_email(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    [later] = enqueue(
        redis_server.url,
        [EmailTask(to="a@example.com", subject="Reminder", text="t")],
        delay=timedelta(hours=1),
    )
    page = client.get("/scheduled").text
    assert f'action="/tasks/{later}/cancel"' in page
    assert client.post(f"/tasks/{later}/cancel", data={"csrf": "0" * 64}).status_code == 403
    assert db.zcard(DELAYED) == 1
    done = client.post(f"/tasks/{later}/cancel", data={"csrf": csrf_of(page)})
    assert "Cancelled: that email will not be sent." in done.text
    assert db.zcard(DELAYED) == 0
    again = client.post(f"/tasks/{later}/cancel", data={"csrf": csrf_of(page), "back": "find"})
    assert "Not cancelled: the task is cancelled." in again.text
    assert re.search(r'id="state">cancelled<', again.text)
    assert client.post("/tasks/not-a-task/cancel", data={"csrf": csrf_of(page)}).status_code == 400


def test_find_shows_a_tasks_status(
    client: TestClient, redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    [queued] = enqueue(redis_server.url, [EmailTask(to="a@example.com", subject="s", text="t")])
    page = client.get(f"/find?q={queued}").text
    assert re.search(r'id="state">queued<', page)
    assert "Cancel this email" in page
    unknown = client.get(f"/find?q={'0' * 32}").text
    assert re.search(r'id="state">unknown<', unknown)
    assert "Cancel this email" not in unknown


def test_read_only_mode_offers_no_cancel(redis_server: RedisServer, db: redis_sync.Redis) -> None:
    [later] = enqueue(
        redis_server.url,
        [EmailTask(to="a@example.com", subject="s", text="t")],
        delay=timedelta(hours=1),
    )
    app = create_app(_settings(redis_server.url, dashboard_read_only=True))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert "cancel" not in client.get("/scheduled").text.lower()
        assert "Cancel this email" not in client.get(f"/find?q={later}").text
        assert client.post(f"/tasks/{later}/cancel", data={"csrf": "x"}).status_code == 403
    assert db.zcard(DELAYED) == 1
