"""Which SMTP replies mean "you are sending too fast": a pure classifier, tested as a table
(`tests/unit/test_throttling.py`).

Providers say it in transient replies (421, 450, 451, 452, 454) with an RFC 3463 enhanced code
of class 4.7 (security or policy: Gmail `421 4.7.0` / `421 4.7.28`), or in words without one
(Amazon SES `454 Throttling failure: Maximum sending rate exceeded.`). Not every 4.7 is about
rate: TLS, authentication, greylisting and client-host checks are policies that a slower rate
does not satisfy, and a reply classified as "slow down" is retried without using an attempt,
so those must stay ordinary retries. A reply with any other enhanced code says what it is
about (`452 4.2.2` mailbox full, `452 4.5.3` too many recipients): never throttling.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["is_slow_down"]

_CODES: Final = frozenset({421, 450, 451, 452, 454})
_ENHANCED = re.compile(r"\s*4\.(\d{1,3})\.\d{1,3}\b")
_RATE_WORDS = re.compile(
    r"throttl|rate.?limit|sending rate|rate exceeded|too (?:many|much|fast|frequent)"
    r"|slow down|exceeded .*(?:rate|limit)|(?:rate|limit) .*exceeded",
    re.IGNORECASE,
)
# 4.7.x replies about something other than rate.
_POLICY_WORDS = re.compile(
    r"tls|ssl|auth|credential|grey|gray|hostname|reverse|ptr|dns|spf|dkim|dmarc|relay"
    r"|blocked|blacklist|blocklist|spam|reputation",
    re.IGNORECASE,
)
# Without an enhanced code, words about the number of recipients or connections are about
# the envelope or the session, not about the rate.
_NOT_RATE = re.compile(r"recipients|connections? (?:from|per)", re.IGNORECASE)


def is_slow_down(code: int, text: str) -> bool:
    """Whether the reply `code` `text` asks the sender to slow down."""
    if code not in _CODES:
        return False
    enhanced = _ENHANCED.match(text)
    if enhanced is not None:
        return enhanced[1] == "7" and not _POLICY_WORDS.search(text)
    return bool(_RATE_WORDS.search(text)) and not _NOT_RATE.search(text)
