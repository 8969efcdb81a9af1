"""A Django email backend that puts every email on the queue instead of sending it.

    # settings.py
    EMAIL_BACKEND = "service.contrib.django.EmailBackend"
    EMAIL_QUEUE_REDIS_URL = "rediss://user:password@host:6379"  # default: $REDIS_URL
    EMAIL_QUEUE_NAME = "emails"                                   # default: $EMAIL_QUEUE

`send_mail`, `EmailMessage`, `EmailMultiAlternatives`, `mail_admins` and `mail_managers` then
enqueue, one task per message, and the worker sends them: to, cc, bcc, reply-to, from, subject,
extra headers, the body and an HTML alternative. Attachments are refused until the task model
has them. `fail_silently` is honoured; `send_messages` returns how many were enqueued.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from pydantic import ValidationError

from ..errors import EnqueueError
from ..producer import SyncProducer
from ..settings import QueueSettings, load_settings
from ..task import EmailTask

__all__ = ["EmailBackend", "to_task"]

# Django builds a backend for every send_mail call: the producers (and their connection pools)
# are made once per process and queue.
_producers: dict[tuple[str, str], SyncProducer] = {}
_producers_lock = threading.Lock()


class EmailBackend(BaseEmailBackend):
    """Enqueues each message (`to_task`) on the queue named by the settings."""

    def __init__(
        self,
        fail_silently: bool = False,
        *,
        redis_url: str | None = None,
        queue: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self._redis_url = redis_url or getattr(settings, "EMAIL_QUEUE_REDIS_URL", None)
        self._queue = queue or getattr(settings, "EMAIL_QUEUE_NAME", None)

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
                    producer.enqueue(to_task(message))
                    enqueued += 1
            except (EnqueueError, ValidationError, ValueError):
                if not self.fail_silently:
                    raise
        return enqueued

    def _producer(self) -> SyncProducer:
        if self._redis_url is None or self._queue is None:
            environment = load_settings(QueueSettings)  # $REDIS_URL, $EMAIL_QUEUE, .env
            url = self._redis_url or environment.redis_url.get_secret_value()
            queue = self._queue or environment.email_queue
        else:
            url, queue = self._redis_url, self._queue
        with _producers_lock:
            producer = _producers.get((url, queue))
            if producer is None:
                producer = _producers[url, queue] = SyncProducer.from_url(url, queue=queue)
        return producer


def to_task(message: EmailMessage) -> EmailTask:
    """The task that sends `message` as Django would: ValueError for what it cannot carry."""
    if message.attachments:
        raise ValueError(
            f"{len(message.attachments)} attachment(s): the queue does not carry attachments "
            "yet; link to the file instead"
        )
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
    )


def _pop(headers: dict[str, str], name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name.lower():
            return headers.pop(key)
    return None
