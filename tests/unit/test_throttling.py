"""Which SMTP replies mean "slow down", as a table (providers' own words where known)."""

from __future__ import annotations

import pytest

from service.worker.throttling import is_slow_down


@pytest.mark.parametrize(
    ("code", "text", "slow_down"),
    [
        # Amazon SES: no enhanced code, the words say it.
        (454, "Throttling failure: Maximum sending rate exceeded.", True),
        (454, "Throttling failure: Daily message quota exceeded.", True),
        # Gmail.
        (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", True),
        (421, "4.7.0 Try again later, closing connection.", True),
        (450, "4.7.28 Gmail has detected an unusual rate of mail", True),
        # Other 4.7.x rate limits (Microsoft, Postfix policy servers...).
        (451, "4.7.500 Server busy. Please try again later", True),
        (452, "4.7.1 Too many messages, slow down", True),
        # No enhanced code: rate words.
        (421, "Rate limit exceeded, try again later", True),
        (450, "too many messages sent too fast", True),
        (451, "Sending rate limited", True),
        # 4.7.x about something a slower rate does not fix.
        (454, "4.7.0 TLS not available due to temporary reason", False),
        (454, "4.7.0 Temporary authentication failure", False),
        (451, "4.7.1 Greylisted, please try again in 300 seconds", False),
        (450, "4.7.1 Client host rejected: cannot find your hostname", False),
        (421, "4.7.0 IP not in whitelist for RCPT domain, closing connection (blocked)", False),
        (451, "4.7.1 Please check DKIM signature", False),
        # Another enhanced code says what it is about, whatever the words.
        (452, "4.2.2 Mailbox full", False),
        (452, "4.5.3 Too many recipients", False),
        (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that", False),
        (451, "4.3.0 Temporary system problem, try again later", False),
        # A 421 that closes the session for another reason.
        (421, "Service not available, closing transmission channel", False),
        (421, "", False),
        (421, "Too many concurrent SMTP connections from this IP", False),
        # Not a transient code in the list.
        (550, "5.7.1 Rate limit exceeded", False),
        (554, "Throttling failure", False),
        (453, "4.7.0 rate limit", False),
        (250, "OK throttled", False),
    ],
)
def test_is_slow_down(code: int, text: str, slow_down: bool) -> None:
    assert is_slow_down(code, text) is slow_down
