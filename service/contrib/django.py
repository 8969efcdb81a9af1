"""A Django email backend that puts every email on the queue instead of sending it.

    # settings.py
    EMAIL_BACKEND = "service.contrib.django.EmailBackend"
    EMAIL_QUEUE_REDIS_URL = "rediss://user:password@host:6379"  # default: $REDIS_URL
    EMAIL_QUEUE_NAME = "emails"                                   # default: $EMAIL_QUEUE
    EMAIL_QUEUE_MAX_EMAIL_BYTES = 10 * 1024 * 1024                # default: $MAX_EMAIL_BYTES
    EMAIL_QUEUE_PRIORITY = "normal"                               # or "high", "low"

`send_mail`, `EmailMessage`, `EmailMultiAlternatives`, `mail_admins` and `mail_managers` then
enqueue, one task per message, and the worker sends them: to, cc, bcc, reply-to, from, subject,
extra headers, the body, an HTML alternative and attachments (`attach`, `attach_file`, and
MIMEBase parts; one with a Content-ID is an inline image beside the HTML). `fail_silently` is
honoured; `send_messages` returns how many were enqueued.

A connection of its own picks another lane for the messages it sends, e.g. password resets:

    connection = get_connection(priority="high")
    send_mail(subject, body, None, [user.email], connection=connection)
"""

from __future__ import annotations

import mimetypes
import threading
from collections.abc import Sequence
from email.mime.base import MIMEBase
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from pydantic import ValidationError

from ..errors import EnqueueError
from ..keys import LANES, Lane
from ..producer import SyncProducer
from ..settings import QueueSettings, load_settings
from ..task import Attachment, EmailTask

__all__ = ["EmailBackend", "to_task"]

# Django builds a backend for every send_mail call: the producers (and their connection pools)
# are made once per process, queue and size limit.
_producers: dict[tuple[str, str, int], SyncProducer] = {}
_producers_lock = threading.Lock()


class EmailBackend(BaseEmailBackend):
    """Enqueues each message (`to_task`) on the queue named by the settings."""

    def __init__(
        self,
        fail_silently: bool = False,
        *,
        redis_url: str | None = None,
        queue: str | None = None,
        priority: Lane | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self._redis_url = redis_url or getattr(settings, "EMAIL_QUEUE_REDIS_URL", None)
        self._queue = queue or getattr(settings, "EMAIL_QUEUE_NAME", None)
        chosen = priority or getattr(settings, "EMAIL_QUEUE_PRIORITY", "normal")
        if chosen not in LANES:
            raise ValueError(f"priority {chosen!r}: use one of {', '.join(LANES)}")
        self._priority: Lane = chosen

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Enqueue each message in turn; the number enqueued. Without `fail_silently`, the
        first failure raises (the messages before it stay enqueued, as Django's SMTP backend
        leaves them sent)."""
        if not email_messages:
            return 0
        producer = self._producer()
        enqueued = 0
        for message in email_messages:
            try:
                if message.recipients():
                    producer.enqueue(to_task(message, priority=self._priority))
                    enqueued += 1
            except (EnqueueError, ValidationError, ValueError):
                if not self.fail_silently:
                    raise
        return enqueued

    def _producer(self) -> SyncProducer:
        max_bytes = getattr(settings, "EMAIL_QUEUE_MAX_EMAIL_BYTES", None)
        if self._redis_url is None or self._queue is None or max_bytes is None:
            # $REDIS_URL, $EMAIL_QUEUE, $MAX_EMAIL_BYTES, .env
            environment = load_settings(QueueSettings)
            url = self._redis_url or environment.redis_url.get_secret_value()
            queue = self._queue or environment.email_queue
            max_bytes = max_bytes or environment.max_email_bytes
        else:
            url, queue = self._redis_url, self._queue
        key = (url, queue, max_bytes)
        with _producers_lock:
            producer = _producers.get(key)
            if producer is None:
                producer = _producers[key] = SyncProducer.from_url(
                    url, queue=queue, max_email_bytes=max_bytes
                )
        return producer


def to_task(message: EmailMessage, *, priority: Lane = "normal") -> EmailTask:
    """The task that sends `message` as Django would, in lane `priority`: ValueError for what
    it cannot carry."""
    text = html = None
    if message.content_subtype == "html":
        html = message.body
    else:
        text = message.body
    alternatives = message.alternatives if isinstance(message, EmailMultiAlternatives) else []
    for content, mimetype in alternatives:
        if mimetype != "text/html" or html is not None:
            raise ValueError(f"an alternative of type {mimetype!r}: only one text/html is sent")
        html = str(content)
    headers = dict(message.extra_headers)
    # Django lets extra headers stand in for these fields; the task has a field for each.
    sender = _pop(headers, "From") or message.from_email
    reply_to = _pop(headers, "Reply-To") or message.reply_to
    return EmailTask(
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
        reply_to=reply_to,
        sender=sender,
        subject=str(message.subject),
        text=text,
        html=html,
        headers=headers,
        attachments=[_attachment(item, has_html=html is not None) for item in message.attachments],
        priority=priority,
    )


def _attachment(item: Any, *, has_html: bool) -> Attachment:
    """An attachment as Django holds it: (filename, content, mimetype) or a MIMEBase part."""
    if isinstance(item, MIMEBase):
        content_type = item.get_content_type()
        content = item.get_payload(decode=True)
        if not isinstance(content, bytes):  # a multipart or message/rfc822 part
            # ValueError, as for every message the backend cannot carry (fail_silently).
            raise ValueError(f"a {content_type} attachment is not a single file")  # noqa: TRY004
        content_id = item.get("Content-ID")
        if content_id is not None:
            content_id = str(content_id).strip().removeprefix("<").removesuffix(">")
        if not has_html:
            content_id = None  # nothing could show it inline: sent as a plain attachment
        extension = mimetypes.guess_extension(content_type) or ""
        filename = item.get_filename() or f"{content_id or 'attachment'}{extension}"
        return Attachment(
            filename=filename, content=content, content_type=content_type, content_id=content_id
        )
    filename, content, mimetype = item
    if isinstance(content, str):
        content = content.encode()
    return Attachment(
        filename=filename or "attachment",
        content=content,
        content_type=mimetype or mimetypes.guess_type(filename or "")[0] or _DEFAULT_TYPE,
    )


_DEFAULT_TYPE = "application/octet-stream"


def _pop(headers: dict[str, str], name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name.lower():
            return headers.pop(key)
    return None
