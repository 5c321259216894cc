"""One domain's delivery in progress: who is still pending, what happened, what to report."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import observe
from ..body import MessageBody
from ..dsn_request import DsnRequest
from ..errors import BodyUnreadable
from ..routing import NextHop
from ..smtp.client import Capabilities
from ..smtp.reply import Reply
from ..tls.context import CLEAR, TlsFacts
from ..tls.policy import Event
from ..tls.reporting import TlsEvent
from .convert import to_7bit
from .plan import DomainPlan, HostPolicy
from .results import Attempt, AttemptResult, RecipientResult, Relay, Status, TlsStep

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

    @property
    def relay(self) -> Relay | None:
        return Relay(self.hop.name, self.ip, self.hop.port) if self.ip != "-" else None

    @property
    def policy_words(self) -> str:
        """policy= of the log lines: the level and what set it, `may(default level)`.

        A REQUIRETLS message says so: `verify([tls.policy] "x.example"; REQUIRETLS)`.
        """
        requiretls = "; REQUIRETLS" if self.policy.requiretls else ""
        return f"{self.policy.level.value}({self.policy.source}{requiretls})"


@dataclass(frozen=True, slots=True)
class SessionInUse:
    """The session a transaction runs on: what the delivery line tells about it."""

    at: Target
    decision: TlsStep | None
    started: float = field(default_factory=time.monotonic)  # the transaction's start


@dataclass(slots=True)
class Outcome:
    """A recipient's standing within one domain's delivery."""

    status: Status = Status.DEFERRED
    reason: str = "no host was tried"
    host: str | None = None
    reply: Reply | None = None
    tls: TlsFacts = CLEAR
    enhanced: str | None = None  # RFC 3463 status when no reply gives one
    relay: Relay | None = None
    policy: str | None = None
    decision: TlsStep | None = None
    setup_seconds: float = 0.0
    transmission_seconds: float = 0.0
    body_unreadable: bool = False
    dsn_passed_on: bool = False


@dataclass(slots=True)
class DomainRun:
    """Mutable state of one domain's delivery: who is still pending, what happened."""

    domain: str
    plan: DomainPlan
    sender: str
    body: MessageBody
    needs_smtputf8: bool
    outcomes: dict[str, Outcome]
    probe_only: bool = False
    """Recipient verification: MAIL, RCPT and RSET at each host, no message."""
    attempts: list[Attempt] = field(default_factory=list)
    events: list[TlsEvent] = field(default_factory=list)  # for TLS reporting
    seven_bit: dict[bool, MessageBody] = field(default_factory=dict)  # by SMTPUTF8 offered
    queue_id: str | None = None  # every log line about the message carries it
    session: SessionInUse | None = None  # set while a transaction runs
    requiretls: bool = False  # RFC 8689: MAIL FROM carried REQUIRETLS (requiretls.py)
    dsn: DsnRequest | None = None  # RFC 3461: passed on to a next hop that offers DSN
    setup_spent: float = 0.0
    """Seconds this run spent setting sessions up (connect to ready for MAIL), those
    that failed on the way included: delays= `c` of each recipient settled since."""

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
            # In memory now: chunked as the original was, unless that was one chunk too.
            chunk = self.body.chunk_size if self.body.chunk_size < self.body.size else None
            self.seven_bit[utf8_headers] = MessageBody.of(converted, chunk)
        return self.seven_bit[utf8_headers]

    @property
    def pending(self) -> list[str]:
        return [r for r, o in self.outcomes.items() if o.status is Status.DEFERRED]

    def settle(self, recipients: Iterable[str], status: Status, reason: str, **facts: Any) -> None:
        session = self.session
        if session is not None:
            facts.update(
                relay=session.at.relay, policy=session.at.policy_words,
                decision=session.decision,
                transmission_seconds=time.monotonic() - session.started,
            )  # fmt: skip
        facts.setdefault("setup_seconds", self.setup_spent)
        for rcpt in recipients:
            self.outcomes[rcpt] = Outcome(status, reason, **facts)

    @contextlib.contextmanager
    def setting_up(self) -> Iterator[None]:
        """Times one session's setup into setup_spent, also when it fails (a connect
        refused, a greeting that never came): Postfix's `c` counts every host tried."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.setup_spent += time.monotonic() - started

    def body_unreadable(self, exc: BodyUnreadable, at: Target | None = None) -> None:
        """Defer whoever is still pending; recipients a next hop already accepted stay so."""
        reason = f"message body unreadable: {exc}"
        self.settle(self.pending, Status.DEFERRED, reason, body_unreadable=True)
        if at is not None:
            self.note(at, AttemptResult.BODY_UNREADABLE, CLEAR, reason)
        else:
            log.error("domain=%s: %s", self.domain, reason)

    def note(
        self, at: Target, result: AttemptResult, tls: TlsFacts, detail: str,
        step: TlsStep | None = None,
    ) -> None:  # fmt: skip
        self.attempts.append(Attempt(at.hop.label, at.ip, result, tls.used, detail))
        observe_step(self, at, tls, result, detail, step)

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
                relay=o.relay,
                policy=o.policy,
                decision=o.decision,
                setup_seconds=o.setup_seconds,
                transmission_seconds=o.transmission_seconds,
                body_unreadable=o.body_unreadable,
                dsn_passed_on=o.dsn_passed_on,
            )
            for rcpt, o in self.outcomes.items()
        ]


def observe_step(
    run: DomainRun, at: Target, tls: TlsFacts, result: AttemptResult, detail: str,
    step: TlsStep | None,
) -> None:  # fmt: skip
    """The attempt line: a step of the delivery, with the message's queue id."""
    tls_words = observe.tls_words(tls.used, tls.version, tls.verified, tls.cipher)
    # Bytes spliced behind the 220 to STARTTLS: someone on the path, worth a warning.
    injected = step is not None and step.event is Event.INJECTION
    level = logging.WARNING if injected else _LOG_LEVELS.get(result, logging.INFO)
    event = observe.Attempt(
        run.queue_id, run.domain, at.relay, at.hop.label, result, tls_words, at.policy_words,
        step, detail, level,
    )  # fmt: skip
    observe.emit(event)
