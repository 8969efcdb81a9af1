"""The Django email backend against a real Django settings module: what the SMTP server
receives through the queue equals, part by part, what Django's own SMTP backend sends."""

from __future__ import annotations

import runpy
from collections.abc import Callable, Iterator
from email.mime.image import MIMEImage
from pathlib import Path
from typing import Any

import django
import pytest
import redis as redis_sync
from django.conf import settings
from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives

from service.local.redis_server import RedisServer, free_port
from tests.conftest import STREAM, wait_until
from tests.integration.test_worker import StartWorker
from tests.smtp_server import Received, SmtpServer

EXAMPLE = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "django_settings.py"))

if not settings.configured:
    settings.configure(
        **{name: value for name, value in EXAMPLE.items() if name.isupper()},
        DEFAULT_FROM_EMAIL="Shop <shop@example.com>",
        SERVER_EMAIL="server@example.com",
        ADMINS=[("Ops", "ops@example.com")],
        EMAIL_SUBJECT_PREFIX="[Django] ",
        LOGGING_CONFIG=None,  # leave the test run's logging alone
    )
    django.setup()


def _plain() -> EmailMessage:
    return EmailMessage(
        subject="Réservation confirmée",
        body="Bonjour Zoë,\n\nvotre commande est prête.\n",
        to=["Zoë Çelik <zoe@example.com>", "b@example.com"],
        cc=["c@example.com"],
        bcc=["audit@example.com"],
        reply_to=["Support <support@example.com>"],
        headers={"X-Campaign": "orders"},
    )


def _alternatives() -> EmailMessage:
    message = EmailMultiAlternatives(
        subject="Your receipt",
        body="Total: 12 EUR\n",
        from_email="Billing <billing@example.com>",
        to=["a@example.com"],
    )
    message.attach_alternative("<p>Total: <b>12 EUR</b></p>\n", "text/html")
    return message


def _with_files() -> EmailMessage:
    message = EmailMultiAlternatives(
        subject="Votre facture",
        body="Ci-joint la facture.\n",
        to=["a@example.com"],
    )
    message.attach_alternative('<p>Facture</p><img src="cid:logo@shop.example">', "text/html")
    message.attach("Facture été.pdf", b"%PDF-1.4\n" + bytes(range(256)), "application/pdf")
    message.attach("notes.txt", "première ligne\nseconde ligne\n", "text/plain")
    message.attach_file(Path(__file__).parents[2] / "config" / "redis.conf")
    logo = MIMEImage(bytes(range(256)) * 4, "png")
    logo.add_header("Content-ID", "<logo@shop.example>")
    logo.add_header("Content-Disposition", "inline", filename="logo.png")
    message.attach(logo)
    return message


def _html_only() -> EmailMessage:
    message = EmailMessage(subject="News", body="<h1>Hello</h1>\n", to=["a@example.com"])
    message.content_subtype = "html"
    return message


@pytest.fixture
def django_smtp() -> Iterator[SmtpServer]:
    """The SMTP server Django's own backend sends to, for comparison."""
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def queue_in_environment(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """$REDIS_URL names the test Redis, where examples/django_settings.py finds the queue."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return redis_server.url


def _parts(received: Received) -> dict[str, Any]:
    """A received email as its parts: envelope, the headers a sender chooses, decoded bodies."""
    message = received.message
    headers = ("From", "To", "Cc", "Reply-To", "Subject", "X-Campaign")
    return {
        "mail_from": received.mail_from,
        "rcpt_tos": sorted(received.rcpt_tos),
        "headers": {name: str(message[name]) for name in headers if message[name] is not None},
        # One difference, on purpose: the worker ends every body with a line break (as the
        # standard library's set_content does); Django sends one that lacks it as it is.
        "bodies": [
            (part.get_content_type(), part.get_content().removesuffix("\r\n"))
            for part in message.walk()
            if not part.is_multipart() and part.get_content_disposition() is None
        ],
        # Files in any order: the worker puts an inline image beside the HTML (related), where
        # Django leaves it among the attachments. A text file arrives with CRLF line ends from
        # Django (as text), as written from the worker (base64): compared with LF.
        "files": sorted(
            (
                part.get_content_type(),
                part.get_content_disposition(),
                part.get_filename(),
                part["Content-ID"] and str(part["Content-ID"]),
                _payload(part).replace(b"\r\n", b"\n"),
            )
            for part in message.walk()
            if part.get_content_disposition() is not None
        ),
    }


def _payload(part: Any) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


@pytest.mark.parametrize(
    "send",
    [
        lambda connection: connection.send_messages([_plain()]),
        lambda connection: mail.send_mail(
            "Hi", "Plain words.\n", None, ["a@example.com"], connection=connection
        ),
        lambda connection: connection.send_messages([_alternatives()]),
        lambda connection: connection.send_messages([_html_only()]),
        lambda connection: connection.send_messages([_with_files()]),
        lambda connection: mail.mail_admins(
            "Disk full", "99% used", html_message="<b>99%</b> used", connection=connection
        ),
    ],
    ids=["plain-non-ascii", "send_mail", "html-alternative", "html-only", "files", "mail_admins"],
)
def test_through_the_queue_the_server_receives_what_django_sends(
    queue_in_environment: str,
    smtp: SmtpServer,
    django_smtp: SmtpServer,
    start_worker: StartWorker,
    send: Callable[[Any], object],
) -> None:
    ours = mail.get_connection()  # the EMAIL_BACKEND of examples/django_settings.py
    djangos = mail.get_connection(
        "django.core.mail.backends.smtp.EmailBackend", host="127.0.0.1", port=django_smtp.port
    )
    send(djangos)
    send(ours)
    start_worker()
    wait_until(lambda: len(smtp.received) == len(django_smtp.received), 15, "the deliveries")
    assert [_parts(r) for r in smtp.received] == [_parts(r) for r in django_smtp.received]


def test_send_messages_counts_what_it_enqueued_and_honours_fail_silently(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    with_calendar = _alternatives()
    with_calendar.attach_alternative("BEGIN:VCALENDAR", "text/calendar")  # only HTML is carried
    loud = mail.get_connection("service.contrib.django.EmailBackend", redis_url=redis_server.url)
    quiet = mail.get_connection(
        "service.contrib.django.EmailBackend", redis_url=redis_server.url, fail_silently=True
    )

    assert quiet.send_messages([_plain(), with_calendar, _alternatives()]) == 2
    with pytest.raises(ValueError, match=r"an alternative of type 'text/calendar'"):
        loud.send_messages([with_calendar])
    assert loud.send_messages([]) == 0
    assert db.xlen(STREAM) == 2


def test_a_connection_with_a_priority_enqueues_into_that_lane(
    redis_server: RedisServer, db: redis_sync.Redis
) -> None:
    backend = "service.contrib.django.EmailBackend"
    urgent = mail.get_connection(backend, redis_url=redis_server.url, priority="high")
    assert urgent.send_messages([_plain()]) == 1
    assert mail.get_connection(backend, redis_url=redis_server.url).send_messages([_plain()]) == 1
    assert (db.xlen(f"{STREAM}:high"), db.xlen(STREAM)) == (1, 1)
    with pytest.raises(ValueError, match=r"priority 'urgent'"):
        mail.get_connection(backend, redis_url=redis_server.url, priority="urgent")
