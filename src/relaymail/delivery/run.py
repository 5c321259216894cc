"""One domain's delivery in progress: who is still pending, what happened, what to report."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..body import MessageBody
from ..routing import NextHop
from ..smtp.client import Capabilities
from ..smtp.reply import Reply
from ..tls.context import CLEAR, TlsFacts
from ..tls.reporting import TlsEvent
from .convert import to_7bit
from .plan import DomainPlan, HostPolicy
from .results import Attempt, AttemptResult, RecipientResult, Status

log = logging.getLogger("relaymail.delivery")

# A delivery is logged once, by whoever queued it (the scheduler's "delivered" line);
# an internal error is a defect to fix, so it stands out. A refused login is logged
# once per burst by the login step (delivery/auth.py), not once per message.
_LOG_LEVELS = {
    AttemptResult.DELIVERED: logging.DEBUG,
    AttemptResult.INTERNAL_ERROR: logging.ERROR,
    AttemptResult.AUTH_FAILED: logging.DEBUG,
    AttemptResult.AUTH_REFUSED: logging.DEBUG,
    AttemptResult.AUTH_NOT_OFFERED: logging.DEBUG,
}


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the next hop, the address ("-" before one), the host policy."""

    hop: NextHop
    ip: str
    policy: HostPolicy


@dataclass(slots=True)
class Outcome:
    """A recipient's standing within one domain's delivery."""

    status: Status = Status.DEFERRED
    reason: str = "no host was tried"
    host: str | None = None
    reply: Reply | None = None
    tls: TlsFacts = CLEAR
    enhanced: str | None = None  # RFC 3463 status when no reply gives one
    body_unreadable: bool = False


@dataclass(slots=True)
class DomainRun:
    """Mutable state of one domain's delivery: who is still pending, what happened."""

    domain: str
    plan: DomainPlan
    sender: str
    body: MessageBody
    needs_smtputf8: bool
    outcomes: dict[str, Outcome]
    attempts: list[Attempt] = field(default_factory=list)
    events: list[TlsEvent] = field(default_factory=list)  # for TLS reporting
    seven_bit: dict[bool, MessageBody] = field(default_factory=dict)  # by SMTPUTF8 offered

    def data_for(self, caps: Capabilities) -> MessageBody:
        """The data as this next hop may take it: 7-bit without 8BITMIME.

        RFC 6152 3: 8-bit data never goes to a server that did not offer 8BITMIME.
        Raises ConversionImpossible when no 7-bit form says the same. The conversion
        works on the whole MIME tree, so only then is the body read at once; the
        converted copy lives as long as this delivery.
        """
        if "8BITMIME" in caps or not self.body.eight_bit():
            return self.body
        utf8_headers = "SMTPUTF8" in caps
        if utf8_headers not in self.seven_bit:
            converted = to_7bit(self.body.read_all(), utf8_headers=utf8_headers)
            self.seven_bit[utf8_headers] = MessageBody.of(converted, self.body.chunk_size)
        return self.seven_bit[utf8_headers]

    @property
    def pending(self) -> list[str]:
        return [r for r, o in self.outcomes.items() if o.status is Status.DEFERRED]

    def settle(self, recipients: Iterable[str], status: Status, reason: str, **facts: Any) -> None:
        for rcpt in recipients:
            self.outcomes[rcpt] = Outcome(status, reason, **facts)

    def note(self, at: Target, result: AttemptResult, tls: TlsFacts, detail: str) -> None:
        self.attempts.append(Attempt(at.hop.label, at.ip, result, tls.used, detail))
        tls_words = (
            f"{tls.version}/{tls.cipher}/{'verified' if tls.verified else 'unverified'}"
            if tls.used
            else "none"
        )
        log.log(
            _LOG_LEVELS.get(result, logging.INFO),
            "domain=%s host=%s ip=%s tls=%s result=%s policy=%s (%s): %s",
            self.domain, at.hop.label, at.ip, tls_words, result,
            at.policy.level.value, at.policy.source, detail,
        )  # fmt: skip

    def results(self, statuses: dict[str, str]) -> list[RecipientResult]:
        """One result per recipient; `statuses` gives RFC 3463 codes that no reply carries."""
        attempts = tuple(self.attempts)
        return [
            RecipientResult(
                recipient=rcpt,
                status=o.status,
                reason=o.reason,
                host=o.host,
                reply=str(o.reply) if o.reply else None,
                tls=o.tls,
                attempts=attempts,
                enhanced_status=statuses.get(rcpt)
                or o.enhanced
                or (o.reply.enhanced if o.reply else None),
                body_unreadable=o.body_unreadable,
            )
            for rcpt, o in self.outcomes.items()
        ]
