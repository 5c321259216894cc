"""What a delivery reports: per recipient a status, the reason, and every attempt."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..tls.context import CLEAR, TlsFacts
from ..tls.policy import Action, Event, Level


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


class AttemptResult(enum.StrEnum):
    """What one step of a delivery came to; the values are the words in logs and JSON."""

    # The message at one host, by its reply to the data (or to DATA itself).
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    # The envelope: the reply to MAIL or to one RCPT.
    MAIL_DEFERRED = "mail-deferred"
    MAIL_BOUNCED = "mail-bounced"
    RCPT_DEFERRED = "rcpt-deferred"
    RCPT_BOUNCED = "rcpt-bounced"
    # The message cannot go to this host as it is.
    EIGHTBITMIME_REFUSED = "8bitmime-refused"
    SIZE_REFUSED = "size-refused"
    SMTPUTF8_REFUSED = "smtputf8-refused"
    # The host cannot be used under the domain's published policies.
    STS_MX_MISMATCH = "sts-mx-mismatch"
    STS_TESTING_MX_MISMATCH = "sts-testing-mx-mismatch"
    DANE_UNUSABLE = "dane-unusable"
    NO_ADDRESS = "no-address"
    # The session up to the mail transaction.
    CONNECT_FAILED = "connect-failed"
    GREETING_REFUSED = "greeting-refused"
    EHLO_REFUSED = "ehlo-refused"
    HELO_REFUSED = "helo-refused"
    SESSION_FAILED = "session-failed"
    # The STARTTLS step, by the policy table's action (tls/policy.py).
    TLS = "tls"
    CONTINUED_CLEAR = "continued-clear"
    TLS_FAILED_RECONNECT_CLEAR = "tls-failed-reconnect-clear"
    RECONNECTED_CLEAR = "reconnected-clear"
    TLS_POLICY_FAILED = "tls-policy-failed"
    TLS_REQUIRED = "tls-required"
    # REQUIRETLS (RFC 8689): the host cannot take such a message (delivery/requiretls.py).
    REQUIRETLS_REFUSED = "requiretls-refused"
    REQUIRETLS_UNAUTHENTICATED = "requiretls-unauthenticated"
    # The login to a credentialed route (SMTP AUTH): 535, another refusal, not offered.
    AUTH_FAILED = "auth-failed"
    AUTH_REFUSED = "auth-refused"
    AUTH_NOT_OFFERED = "auth-not-offered"
    # The queued message data could not be read (deleted meanwhile, a disk error).
    BODY_UNREADABLE = "body-unreadable"
    # A defect nobody foresaw, ours or the server's.
    INTERNAL_ERROR = "internal-error"

    @classmethod
    def of_message(cls, status: Status) -> AttemptResult:
        return _OF_MESSAGE[status]

    @classmethod
    def of_mail(cls, status: Status) -> AttemptResult:
        """The reply to MAIL refused the sender: it bounces or defers every recipient."""
        return _OF_MAIL[status]


_OF_MESSAGE = {
    Status.DELIVERED: AttemptResult.DELIVERED,
    Status.DEFERRED: AttemptResult.DEFERRED,
    Status.BOUNCED: AttemptResult.BOUNCED,
}
_OF_MAIL = {
    Status.DEFERRED: AttemptResult.MAIL_DEFERRED,
    Status.BOUNCED: AttemptResult.MAIL_BOUNCED,
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One step of a delivery that a person may want to see."""

    host: str
    ip: str
    result: AttemptResult
    tls: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Relay:
    """The server that took (or refused) the mail: Postfix's relay=host[ip]:port."""

    host: str
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsStep:
    """The STARTTLS step of a session: the table's cell and what it said (tls/policy.py)."""

    level: Level
    event: Event
    action: Action
    result: AttemptResult
    reason: str

    def __str__(self) -> str:
        return f"{self.result.value}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: str
    status: Status
    reason: str
    host: str | None = None
    reply: str | None = None
    tls: TlsFacts = CLEAR
    attempts: tuple[Attempt, ...] = ()
    enhanced_status: str | None = None
    # The session that settled the recipient, for the log line (observe/events.py).
    relay: Relay | None = None
    policy: str | None = None  # the host's level and where it came from: may(default)
    decision: TlsStep | None = None
    setup_seconds: float = 0.0
    transmission_seconds: float = 0.0
    # Deferred because the message data could not be read, not for anything a host did.
    body_unreadable: bool = False
    # Delivered to a next hop that offers DSN (RFC 3461): its notifications are its own now,
    # so NOTIFY=SUCCESS gets no "relayed" report from us.
    dsn_passed_on: bool = False

    @classmethod
    def bad_address(cls, recipient: str, error: Exception) -> RecipientResult:
        """An address no next hop could take (its domain is not a domain name)."""
        return cls(recipient, Status.BOUNCED, str(error), enhanced_status="5.1.3")

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "host": self.host,
            "reply": self.reply,
            "tls": self.tls.to_json(),
            "reason": self.reason,
            "attempts": [
                {
                    "host": a.host,
                    "ip": a.ip,
                    "result": a.result.value,
                    "tls": a.tls,
                    "detail": a.detail,
                }
                for a in self.attempts
            ],
        }
