"""Which replies say "you send too much, slow down": a table of patterns, first match wins.

A throttling reply suspends the destination (suspension.py) rather than letting
every queued message ask again and be deferred harder. Greylisting also answers
451 4.7.1 but speaks of one sender and recipient, not of the rate: it is listed
first, as not throttling. Only transient (4xx) replies are looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ThrottleSign:
    name: str  # what the log line and the status page call it
    pattern: re.Pattern[str]  # searched in the whole reply, code included
    throttles: bool = True


def _sign(name: str, pattern: str, throttles: bool = True) -> ThrottleSign:
    return ThrottleSign(name, re.compile(pattern, re.IGNORECASE), throttles)


THROTTLE_SIGNS: Final = (
    _sign("greylisting", r"grey-?list|gray-?list", throttles=False),
    _sign("gmail rate limit", r"\b4\.7\.28\b|rate.limited|unusual rate"),
    _sign("yahoo deferral", r"\[TSS?0[1-5]\]"),  # [TS01], [TSS04]: "temporarily deferred"
    _sign("microsoft server busy", r"\b4\.7\.(500|650)\b|server busy"),
    _sign("too many connections", r"too many (connections|concurrent|sessions)"),
    _sign("too many messages", r"too many (messages|mails)|sending rate|message rate"),
    _sign("421 service not available", r"^421\b"),
    _sign("451 4.7.x", r"^451[ -]4\.7\.\d{1,3}\b"),
)


def throttle_sign(reply: str | None) -> ThrottleSign | None:
    """The sign `reply` shows of throttling, or None (also for replies that are not 4xx)."""
    if reply is None or not reply.startswith("4"):
        return None
    for sign in THROTTLE_SIGNS:
        if sign.pattern.search(reply):
            return sign if sign.throttles else None
    return None
