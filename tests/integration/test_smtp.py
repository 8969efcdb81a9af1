"""The worker's one SMTP transaction against a real server (aiosmtpd): it must do on the wire
exactly what aiosmtplib's sendmail does, errors included, whether the server offers PIPELINING
(the commands go out in groups) or not (one by one), for every email and address."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import pytest

from service import EmailTask
from service.errors import SmtpUnavailableError
from service.settings import WorkerSettings
from service.wire import QueuedTask
from service.worker.render import Outgoing, render
from service.worker.smtp import SmtpPool
from service.worker.smtp_result import Answered, FailureKind, Reply, SendFailure
from service.worker.transaction import transmit
from tests.smtp_server import SmtpServer

# Part of the inner-loop subset (`make test-fast`): real servers, but seconds in all.
pytestmark = pytest.mark.fast

SENDER = "app@example.com"
CONTENT = (
    b"From: App <app@example.com>\r\nTo: a@example.com, b@example.com\r\nSubject: hi\r\n"
    b"Message-ID: <0123@example.com>\r\nMIME-Version: 1.0\r\n\r\n"
    b"Hello.\r\n.a line that starts with a dot\r\n"
)
QUEUED = Reply(250, "OK queued")  # the test server's reply to a message
SENT = Answered({}, QUEUED)


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
async def client(
    smtp: SmtpServer, request: pytest.FixtureRequest
) -> AsyncIterator[aiosmtplib.SMTP]:
    """One open SMTP session with the test server, which offers PIPELINING or not."""
    smtp.behaviour.pipelining = request.param
    session = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=smtp.port, start_tls=False, local_hostname="test"
    )
    await session.connect()
    await session.ehlo()
    yield session
    session.close()


async def test_the_transaction_sends_what_sendmail_sends(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    recipients = ["a@example.com", "b@example.com"]

    _, answer = await client.sendmail(SENDER, recipients, CONTENT, mail_options=["BODY=8BITMIME"])
    sent = await transmit(client, SENDER, recipients, CONTENT, mail_options=["BODY=8BITMIME"])

    assert sent.refused == {}
    assert (sent.reply.code, sent.reply.message) == (250, answer)  # the reply to the message
    by_sendmail, by_transmit = smtp.received
    for received in (by_sendmail, by_transmit):
        assert received.mail_from == SENDER
        assert received.rcpt_tos == recipients
    assert by_transmit.mail_options == by_sendmail.mail_options
    assert by_transmit.mail_options == [f"SIZE={len(CONTENT)}", "BODY=8BITMIME"]
    assert by_transmit.content == by_sendmail.content
    assert by_transmit.content == CONTENT  # dot-stuffed on the wire, unstuffed by the server


async def test_refused_recipients_are_returned_and_the_others_get_the_message(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    smtp.behaviour.rcpt_replies = {"gone@example.com": "550 5.1.1 no such user"}

    refused, _ = await transmit(client, SENDER, ["gone@example.com", "a@example.com"], CONTENT)

    assert {to: (r.code, r.message) for to, r in refused.items()} == {
        "gone@example.com": (550, "5.1.1 no such user")
    }
    (received,) = smtp.received
    assert received.rcpt_tos == ["a@example.com"]


async def test_all_recipients_refused_raises_for_each_and_the_session_stays_usable(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    smtp.behaviour.rcpt_replies = {
        "gone@example.com": "550 5.1.1 no such user",
        "busy@example.com": "450 4.2.1 try later",
    }

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as raised:
        await transmit(client, SENDER, ["gone@example.com", "busy@example.com"], CONTENT)

    assert [(r.recipient, r.code) for r in raised.value.recipients] == [
        ("gone@example.com", 550),
        ("busy@example.com", 450),
    ]
    assert smtp.data_started == 0
    # RSET cleared the envelope: the next message on this session goes to its own recipient.
    await transmit(client, SENDER, ["a@example.com"], CONTENT)
    (received,) = smtp.received
    assert received.rcpt_tos == ["a@example.com"]


async def test_a_refused_sender_raises_sender_refused(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    smtp.behaviour.mail_replies = ["553 5.7.1 sender not allowed"]

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as raised:
        await transmit(client, SENDER, ["a@example.com"], CONTENT)

    assert (raised.value.code, raised.value.sender) == (553, SENDER)
    assert smtp.data_started == 0
    await transmit(client, SENDER, ["a@example.com"], CONTENT)
    assert len(smtp.received) == 1


async def test_a_421_to_mail_then_a_closed_connection_raises_the_421(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    # Pipelined, the RCPT and DATA of the group get no reply: the server's 421 is still what
    # the worker reports (and retries), not a bare "connection lost".
    smtp.behaviour.mail_replies = ["421 4.3.2 shutting down"]

    with pytest.raises(aiosmtplib.SMTPResponseException) as raised:
        await transmit(client, SENDER, ["a@example.com"], CONTENT)

    assert (raised.value.code, raised.value.message) == (421, "4.3.2 shutting down")
    assert smtp.data_started == 0


async def test_a_refused_message_raises_data_error(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    smtp.behaviour.data_replies = ["554 5.6.0 content rejected"]

    with pytest.raises(aiosmtplib.SMTPDataError) as raised:
        await transmit(client, SENDER, ["a@example.com"], CONTENT)

    assert raised.value.code == 554
    assert smtp.received == []


async def test_a_session_not_yet_greeted_is_greeted_first(smtp: SmtpServer) -> None:
    session = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=smtp.port, start_tls=False, local_hostname="test"
    )
    await session.connect()
    try:
        await transmit(session, SENDER, ["a@example.com"], CONTENT, mail_options=["SMTPUTF8"])
    finally:
        session.close()

    (received,) = smtp.received
    assert received.mail_options == [f"SIZE={len(CONTENT)}", "SMTPUTF8"]


async def test_the_pool_deadline_bounds_a_stalled_transaction_and_drops_its_connection(
    smtp: SmtpServer,
) -> None:
    # The transaction sets no timeout per command: SMTP_TIMEOUT_SECONDS, enforced by the pool
    # around the whole send, is what ends a server that stops answering mid-message.
    pool = _pool(smtp, smtp_timeout_seconds=0.5)
    outgoing = Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"])
    smtp.behaviour.data_delay = 5.0

    started = time.monotonic()
    result = await pool.send(outgoing)

    assert result == SendFailure(FailureKind.TIMEOUT, "SMTP send timed out")
    assert time.monotonic() - started < 2.0
    assert pool.idle_connections == 0  # a session in an unknown state is never reused
    smtp.behaviour.data_delay = 0.0
    assert await pool.send(outgoing) == SENT
    assert pool.idle_connections == 1
    await pool.close()
    assert len(smtp.received) == 1  # the stalled message is still held by the server


def _count_writes(client: aiosmtplib.SMTP) -> list[bytes]:
    """Every write the session makes to its socket from now on (asyncio's loop in tests)."""
    transport: Any = client.transport
    writes: list[bytes] = []
    write = transport.write

    def counting(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counting
    return writes


async def test_a_pipelining_server_gets_the_envelope_in_one_write_and_the_message_in_another(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    recipients = ["a@example.com", "b@example.com"]
    writes = _count_writes(client)

    await transmit(client, SENDER, recipients, CONTENT, mail_options=["BODY=8BITMIME"])

    if smtp.behaviour.pipelining:
        envelope, message = writes
        assert (
            envelope
            == (
                f"MAIL FROM:<{SENDER}> SIZE={len(CONTENT)} BODY=8BITMIME\r\n"
                "RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            ).encode()
        )
        assert message.endswith(b"\r\n.\r\n")
    else:  # MAIL, two RCPT, DATA, the message: each waits for the reply before it
        assert len(writes) == 5
    (received,) = smtp.received
    assert received.rcpt_tos == recipients
    assert received.content == CONTENT


async def test_a_354_after_every_recipient_was_refused_is_answered_with_an_empty_message(
    smtp: SmtpServer,
) -> None:
    # RFC 2920 3.1: a pipelining client that got DATA's 354 with no recipient left must end
    # the message at once (a lone dot) rather than leave the server waiting for it.
    smtp.behaviour.pipelining = smtp.behaviour.data_despite_refusals = True
    smtp.behaviour.rcpt_replies = {"gone@example.com": "550 5.1.1 no such user"}
    smtp.behaviour.data_replies = ["554 5.5.1 no valid recipients"]
    session = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=smtp.port, start_tls=False, local_hostname="test"
    )
    await session.connect()
    try:
        # Without the dot, the server would wait for the message and the RSET for its reply.
        async with asyncio.timeout(5):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                await transmit(session, SENDER, ["gone@example.com"], CONTENT)
            assert smtp.data_started == 1  # the server saw the end of an empty message
            await transmit(session, SENDER, ["a@example.com"], CONTENT)
    finally:
        session.close()

    (received,) = smtp.received
    assert received.rcpt_tos == ["a@example.com"]
    assert received.content == CONTENT


async def test_addresses_no_command_can_carry_are_refused_before_anything_is_sent(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    writes = _count_writes(client)

    with pytest.raises(ValueError, match="not a bare address"):
        await transmit(client, SENDER, ["a@example.com", "b@example.com>\r\nRSET"], CONTENT)
    with pytest.raises(ValueError, match="no recipient"):
        await transmit(client, SENDER, [], CONTENT)

    assert writes == []


@pytest.mark.parametrize("greeting", ["421", "421 ", "554"])
async def test_a_greeting_without_text_makes_the_server_unavailable_not_a_crash(
    smtp: SmtpServer, greeting: str
) -> None:
    # RFC 5321 makes a reply's text optional: a server going away may greet with a bare 421.
    # Both ways of opening a session (a send's, the breaker's probe) must say so plainly.
    smtp.behaviour.greeting = greeting
    pool = _pool(smtp)
    where = f"cannot open an SMTP session with 127.0.0.1:{smtp.port}: SMTP {greeting.strip()}"

    result = await pool.send(Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"]))
    with pytest.raises(SmtpUnavailableError) as probed:
        await pool.probe()

    assert result == SendFailure(FailureKind.UNAVAILABLE, where)
    assert probed.value.reason == where
    await pool.close()


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
async def test_replies_without_text_are_read_as_their_codes(
    smtp: SmtpServer, pipelining: bool
) -> None:
    # Bare codes to RCPT, to the message and to MAIL, each on its own send: the pool reports
    # each as a reply with no text, never as a crash or an "unexpected" error.
    smtp.behaviour.pipelining = pipelining
    smtp.behaviour.rcpt_replies = {"gone@example.com": "550"}
    pool = _pool(smtp)
    recipients = ["a@example.com", "gone@example.com"]

    partly = await pool.send(Outgoing.prebuilt(CONTENT, SENDER, recipients))
    smtp.behaviour.data_replies = ["554"]
    refused = await pool.send(Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"]))
    smtp.behaviour.mail_replies = ["421"]
    closing = await pool.send(Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"]))
    await pool.close()

    assert partly == Answered({"gone@example.com": Reply(550, "")}, QUEUED)
    assert refused == SendFailure(FailureKind.REFUSED, "SMTP 554", Reply(554, ""))
    # One by one, the 421 is MAIL's reply (as sendmail reports it); pipelined, it is the reply
    # that cut the group short. Either way a transient refusal, retried.
    assert isinstance(closing, SendFailure)
    assert (closing.detail, closing.reply) == ("SMTP 421", Reply(421, ""))
    assert closing.kind is (FailureKind.REFUSED if pipelining else FailureKind.SENDER_REFUSED)


def _pool(
    smtp: SmtpServer, *, size: int = 1, idle_close_seconds: float = 30.0, **settings: Any
) -> SmtpPool:
    """A pool of `size` connections to the test server, without TLS, with a short deadline."""
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "smtp_timeout_seconds": 2,
        "mail_from": "app@example.com",
        **settings,
    }
    return SmtpPool(
        WorkerSettings(_env_file=None, **values),
        size=size,
        local_hostname="test",
        idle_close_seconds=idle_close_seconds,
    )


async def test_the_probe_fails_where_a_send_cannot_open_its_session(smtp: SmtpServer) -> None:
    # A server that greets but refuses EHLO and HELO: no send can reach MAIL. A probe that only
    # connected and said QUIT passed here, the breaker resumed, and every send paused it again.
    smtp.behaviour.helo_reply = "554 5.7.1 not welcome"
    pool = _pool(smtp)
    where = f"cannot open an SMTP session with 127.0.0.1:{smtp.port}: SMTP 554 5.7.1 not welcome"

    result = await pool.send(Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"]))
    with pytest.raises(SmtpUnavailableError) as probed:
        await pool.probe()

    assert result == SendFailure(FailureKind.UNAVAILABLE, where)
    assert probed.value.reason == where
    smtp.behaviour.helo_reply = None
    await pool.probe()  # the server takes sessions again: so does the probe
    await pool.close()


async def test_the_probe_logs_in_as_a_send_does(smtp: SmtpServer) -> None:
    smtp.behaviour.credentials = ("mailer", "the-right-one")
    pool = _pool(smtp, smtp_username="mailer", smtp_password="a-wrong-one")  # noqa: S106

    with pytest.raises(SmtpUnavailableError) as probed:
        await pool.probe()

    assert probed.value.reason.endswith(
        "authentication failed (SMTP 535); check SMTP_USERNAME/SMTP_PASSWORD"
    )
    assert "a-wrong-one" not in probed.value.reason
    smtp.behaviour.credentials = ("mailer", "a-wrong-one")
    await pool.probe()
    await pool.close()


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
async def test_control_characters_in_a_body_reach_the_server_encoded_and_intact(
    smtp: SmtpServer, pipelining: bool
) -> None:
    smtp.behaviour.pipelining = pipelining
    text = "NUL\x00 ESC\x1b[1m DEL\x7f"
    task = EmailTask(to="a@example.com", subject="s", text=text, html="<p>\x1b</p>")
    pool = _pool(smtp)

    result = await pool.send(render(QueuedTask("0" * 32, 0, task), default_sender=SENDER))
    await pool.close()

    assert result == SENT
    (received,) = smtp.received
    assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", received.content) is None
    plain, html = received.message.get_body(("plain",)), received.message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content().replace("\r\n", "\n") == text + "\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>\x1b</p>\n"


@pytest.mark.parametrize(
    ("mail_from", "recipients"),
    [
        ('"a b"@example.com', ["a@example.com"]),  # a quoted local part
        (SENDER, ["user@[192.0.2.1]"]),  # an address literal
        (SENDER, ["jörg@example.com", "a@bücher.example"]),  # SMTPUTF8
    ],
)
async def test_every_address_goes_through_the_one_transaction(
    smtp: SmtpServer, mail_from: str, recipients: list[str]
) -> None:
    pool = _pool(smtp)

    result = await pool.send(Outgoing.prebuilt(CONTENT, mail_from, recipients))
    await pool.close()

    assert result == SENT
    (received,) = smtp.received
    assert (received.mail_from, received.rcpt_tos) == (mail_from, recipients)
    needs_utf8 = not all(address.isascii() for address in (mail_from, *recipients))
    assert ("SMTPUTF8" in received.mail_options) is needs_utf8


async def test_a_non_ascii_email_is_sent_8bit_where_offered_and_7bit_where_not(
    smtp: SmtpServer,
) -> None:
    task = EmailTask(
        to="Jörg <j@example.com>", subject="Grüße", text="Schöne Grüße\n", html="<p>Grüße</p>"
    )
    outgoing = render(QueuedTask("0" * 32, 0, task), default_sender=SENDER)
    pool = _pool(smtp)

    assert await pool.send(outgoing) == SENT
    await pool.close()
    smtp.behaviour.eight_bit_mime = False
    assert await pool.send(outgoing) == SENT
    await pool.close()

    eight_bit, seven_bit = smtp.received
    assert "BODY=8BITMIME" in eight_bit.mail_options
    assert not eight_bit.content.isascii()
    assert "BODY=8BITMIME" not in seven_bit.mail_options
    assert seven_bit.content.isascii()
    for received in (eight_bit, seven_bit):
        assert received.message["Subject"] == "Grüße"
        assert received.message["To"] == "Jörg <j@example.com>"
        plain = received.message.get_body(("plain",))
        assert plain is not None
        assert plain.get_content().replace("\r\n", "\n") == "Schöne Grüße\n"


@pytest.mark.parametrize(
    ("offered", "recipient", "content", "missing"),
    [
        ("smtputf8", "jörg@example.com", CONTENT, "SMTPUTF8"),
        ("eight_bit_mime", "a@example.com", CONTENT + "Grüße\r\n".encode(), "8BITMIME"),
    ],
)
async def test_an_email_the_server_cannot_take_is_a_permanent_failure_sent_nowhere(
    smtp: SmtpServer, offered: str, recipient: str, content: bytes, missing: str
) -> None:
    setattr(smtp.behaviour, offered, False)
    pool = _pool(smtp)

    result = await pool.send(Outgoing.prebuilt(content, SENDER, [recipient]))
    await pool.close()

    assert isinstance(result, SendFailure)
    assert result.kind is FailureKind.UNSUPPORTED
    assert f"does not offer {missing}" in result.detail
    assert smtp.data_started == 0
    assert smtp.received == []


async def test_connections_grow_while_sends_wait_and_close_once_idle(smtp: SmtpServer) -> None:
    # Each message takes 0.2 s to be accepted (a relay far away): ten sends at once open ten
    # connections; once idle, they close.
    smtp.behaviour.data_delay = 0.2
    pool = _pool(smtp, size=10, idle_close_seconds=0.3)

    results = await asyncio.gather(
        *(pool.send(Outgoing.prebuilt(CONTENT, SENDER, [f"u{i}@example.com"])) for i in range(10))
    )

    assert results == [SENT] * 10
    assert (pool.open_connections, pool.idle_connections, pool.capacity) == (10, 10, 10)
    assert len({received.peer for received in smtp.received}) == 10
    smtp.behaviour.data_delay = 0.0
    await pool.send(
        Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"])
    )  # the most recent one again
    await asyncio.sleep(1.0)  # three times the idle limit
    assert (pool.open_connections, pool.idle_connections, smtp.quits) == (0, 0, 10)
    assert smtp.connections == 0
    await pool.close()


async def test_the_pool_holds_at_the_connections_the_server_takes_and_loses_nothing(
    smtp: SmtpServer,
) -> None:
    # A server that takes three sessions and greets a fourth with "421 too many connections":
    # the pool keeps sending over three instead of failing or pausing, and says it held.
    smtp.behaviour.max_connections = 3
    smtp.behaviour.data_delay = 0.05
    pool = _pool(smtp, size=10)
    recipients = [f"u{i}@example.com" for i in range(40)]

    results = await asyncio.gather(
        *(pool.send(Outgoing.prebuilt(CONTENT, SENDER, [to])) for to in recipients)
    )

    assert results == [SENT] * 40
    assert sorted(to for received in smtp.received for to in received.rcpt_tos) == sorted(
        recipients
    )
    assert smtp.most_connections <= 4  # three sessions, and the one refused at a time
    assert smtp.crowded >= 1
    assert (pool.open_connections, pool.capacity) == (3, 3)
    assert len({received.peer for received in smtp.received}) == 3
    await pool.close()


async def test_a_server_refusing_every_session_is_unavailable_not_held(smtp: SmtpServer) -> None:
    smtp.behaviour.max_connections = 0
    pool = _pool(smtp, size=10)

    result = await pool.send(Outgoing.prebuilt(CONTENT, SENDER, ["a@example.com"]))

    assert isinstance(result, SendFailure)
    assert result.kind is FailureKind.UNAVAILABLE
    assert "421 4.7.0 Error: too many connections" in result.detail
    assert (pool.open_connections, pool.capacity) == (0, 10)
    await pool.close()


async def test_smtputf8_is_asked_for_whenever_an_address_needs_it(
    smtp: SmtpServer, client: aiosmtplib.SMTP
) -> None:
    await transmit(client, SENDER, ["jörg@example.com"], CONTENT)

    (received,) = smtp.received
    assert received.rcpt_tos == ["jörg@example.com"]
    assert received.mail_options == [f"SIZE={len(CONTENT)}", "SMTPUTF8"]
