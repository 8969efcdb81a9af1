"""The peer the worker is measured against: taskiq's Redis Stream broker sending email.

Its task is written as taskiq's users write one: build an `EmailMessage`, `aiosmtplib.send` it
(one connection per email). It runs in the bench's own virtualenv (`var/bench-peer`, made by
`bench.mix`), never with the project's dependencies, so this module imports nothing from
`service`.

    python -m bench.peer_taskiq kick EMAILS.json    # enqueue every email in the file
    taskiq worker bench.peer_taskiq:broker ...      # the peer's worker (started by bench.mix)

Settings come from the environment: PEER_REDIS_URL, PEER_QUEUE, PEER_SMTP_PORT.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from taskiq_redis import RedisStreamBroker

__all__ = ["broker", "send_email"]

broker = RedisStreamBroker(
    os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6399/0"),
    queue_name=os.environ.get("PEER_QUEUE", "peer"),
    consumer_id="0",  # the emails are enqueued before the worker starts
)
_SMTP_PORT = int(os.environ.get("PEER_SMTP_PORT", "25"))


# Named: the kicker runs this module as __main__, which would change the derived name.
@broker.task(task_name="send_email")  # type: ignore[untyped-decorator]  # no taskiq for mypy
async def send_email(
    sender: str,
    to: str,
    subject: str,
    text: str,
    *,
    html: str | None = None,
    pdf: str | None = None,
) -> None:
    """One email, as a taskiq user would send it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    if pdf is not None:
        message.add_attachment(
            base64.b64decode(pdf), maintype="application", subtype="pdf", filename="invoice.pdf"
        )
    await aiosmtplib.send(message, hostname="127.0.0.1", port=_SMTP_PORT, start_tls=False)


async def _kick(emails: list[dict[str, str | None]]) -> None:
    await broker.startup()
    try:
        for email in emails:
            await send_email.kiq(**email)
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] != ["kick"] or len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(_kick(json.loads(Path(sys.argv[2]).read_text())))
