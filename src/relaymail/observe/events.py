"""One typed event per fact the daemon reports: what logs and metrics are made of.

Each event is a frozen dataclass; `fields()` lists its facts in the order the
text line shows them, with Postfix's names where Postfix has one (`to`,
`orig_to`, `relay`, `delay`, `delays`, `dsn`, `status`, `client`,
`sasl_username`, `message-id`, `from`, `size`, `nrcpt`). The rendering
(render.py) and the metrics (metrics.py) read these values, never a text line.
A value is None when the fact does not apply; the text form leaves it out and
JSON gives null. `queue_id` is None before a message has one (Postfix's NOQUEUE).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # annotations only: the delivery package logs through this one
    from ..delivery.results import AttemptResult, Relay, TlsStep
    from ..queue.store import AdminAction

Value = str | int | float | bool | tuple[str, ...] | None


class Field(enum.Enum):
    """How the text form writes a value; JSON writes every value as its type."""

    PLAIN = "plain"
    ADDRESS = "address"  # <user@domain>, Postfix's way; <> is the null sender
    ADDRESSES = "addresses"  # <a>,<b>
    SECONDS = "seconds"  # 1.2, 0.01: Postfix's precision
    TRAILER = "trailer"  # the last part of a line, in parentheses: a reply or our reason


# A fact: its name, its value, how the text form writes it. A plain tuple: every
# event makes a dozen on the hot path, and a NamedTuple's costs ten times as much.
Fact = tuple[str, Value, Field]
PLAIN, ADDRESS, ADDRESSES = Field.PLAIN, Field.ADDRESS, Field.ADDRESSES
SECONDS, TRAILER = Field.SECONDS, Field.TRAILER


class DeliveryStatus(enum.StrEnum):
    """Postfix's `status=` words; `expired` is a deferral that reached queue.lifetime."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"


class RejectReason(enum.StrEnum):
    """Why the inbound side refused something: a bounded set, a metric label each."""

    TOO_MANY_CONNECTIONS = "too-many-connections"
    SHUTTING_DOWN = "shutting-down"
    LINE_TOO_LONG = "line-too-long"
    BARE_LINE_ENDING = "bare-line-ending"
    SYNTAX = "syntax"
    UNKNOWN_COMMAND = "unknown-command"
    BAD_SEQUENCE = "bad-sequence"
    TOO_MANY_COMMANDS = "too-many-commands"
    TLS_REQUIRED = "tls-required"
    TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
    AUTH_REQUIRED = "auth-required"
    AUTH_FAILED = "auth-failed"
    TOO_MANY_AUTH_FAILURES = "too-many-auth-failures"
    CLIENT_LIMITED = "client-limited"  # a per-client limit: connections, rate, AUTH block
    RECIPIENT_UNVERIFIED = "recipient-unverified"  # recipient verification said no or not yet
    SENDER_NOT_ALLOWED = "sender-not-allowed"  # a login sending as an address not its own
    RELAY_DENIED = "relay-denied"
    BAD_ADDRESS = "bad-address"
    TOO_MANY_RECIPIENTS = "too-many-recipients"
    NO_VALID_RECIPIENTS = "no-valid-recipients"
    MESSAGE_TOO_BIG = "message-too-big"
    MAIL_LOOP = "mail-loop"
    QUEUE_UNAVAILABLE = "queue-unavailable"
    INTERNAL_ERROR = "internal-error"
    IDLE_TIMEOUT = "idle-timeout"  # nothing from the client for `idle_timeout`: 421, closed
    OTHER = "other"


class Direction(enum.StrEnum):
    OPENED = "opened"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Delays:
    """Postfix's delays=a/b/c/d, as relaymail measures them (seconds).

    a: before the queue: from the client's MAIL FROM (or the maildrop file's
       creation) to the commit that made the message durable; 0 when unknown
       (mail loaded from the queue after a restart);
    b: in the queue: from that commit to the start of this delivery attempt,
       retry waits included;
    c: connection setup (connect, greeting, EHLO, STARTTLS and login) of every
       session this attempt set up until the recipient was settled, hosts that
       failed included; 0 on a reused session with no host before it;
    d: transmission: MAIL FROM to the reply that settled the recipient.
    """

    before_queue: float
    in_queue: float
    setup: float
    transmission: float

    def __str__(self) -> str:
        return "/".join(
            seconds(v) for v in (self.before_queue, self.in_queue, self.setup, self.transmission)
        )


class LogEvent:
    """What every event offers its sinks: a name, a log level, the facts in order."""

    __slots__ = ()
    name: ClassVar[str]
    queue_id: str | None

    def severity(self) -> int:
        return logging.INFO

    def fields(self) -> Sequence[Fact]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Delivery(LogEvent):
    """One recipient's outcome of one delivery attempt (Postfix's smtp line)."""

    name: ClassVar[str] = "delivery"
    queue_id: str | None
    to: str
    status: DeliveryStatus
    sender: str | None = None
    orig_to: str | None = None
    relay: Relay | None = None
    delay: float | None = None
    delays: Delays | None = None
    dsn: str | None = None
    tls: str | None = None  # TLSv1.3/verified, TLSv1.2/unverified, clear
    policy: str | None = None  # may(default)
    decision: TlsStep | None = None
    next_attempt: str | None = None  # deferred: when it is tried again (UTC, ISO 8601)
    reply: str | None = None  # the remote server's reply that settled it
    reason: str = ""  # our words: why it went this way

    def fields(self) -> Sequence[Fact]:
        return (
            ("to", self.to, ADDRESS),
            ("orig_to", self.orig_to, ADDRESS),
            ("from", self.sender, ADDRESS),
            ("relay", str(self.relay) if self.relay else "none", PLAIN),
            ("delay", self.delay, SECONDS),
            ("delays", str(self.delays) if self.delays else None, PLAIN),
            ("dsn", self.dsn, PLAIN),
            ("tls", self.tls, PLAIN),
            ("policy", self.policy, PLAIN),
            ("decision", str(self.decision) if self.decision else None, PLAIN),
            ("next", self.next_attempt, PLAIN),
            ("status", self.status.value, PLAIN),
            ("reply", self.reply, TRAILER),
            ("reason", self.reason, TRAILER),
        )


@dataclass(frozen=True, slots=True)
class Attempt(LogEvent):
    """One step of a delivery worth a line: a host failed, TLS was judged, a message sent."""

    name: ClassVar[str] = "attempt"
    queue_id: str | None
    domain: str
    relay: Relay | None  # None before an address was chosen (policy refused the host)
    host: str
    result: AttemptResult
    tls: str
    policy: str
    step: TlsStep | None = None
    detail: str = ""
    log_level: int = logging.INFO

    def severity(self) -> int:
        return self.log_level

    def fields(self) -> Sequence[Fact]:
        step = self.step
        return (
            ("domain", self.domain, PLAIN),
            ("relay", str(self.relay) if self.relay else f"{self.host}[-]", PLAIN),
            ("result", self.result.value, PLAIN),
            ("tls", self.tls, PLAIN),
            ("policy", self.policy, PLAIN),
            ("tls_event", step.event.name.lower() if step else None, PLAIN),
            ("tls_action", step.action.name.lower() if step else None, PLAIN),
            ("detail", self.detail, TRAILER),
        )


@dataclass(frozen=True, slots=True)
class Accepted(LogEvent):
    """A message the inbound side committed to the queue (Postfix's smtpd + cleanup lines)."""

    name: ClassVar[str] = "accepted"
    queue_id: str | None
    client_ip: str
    helo: str | None
    sasl_username: str | None
    message_id: str | None
    sender: str
    size: int
    nrcpt: int
    tls: str  # TLSv1.3, or clear
    folded: int = 0

    def fields(self) -> Sequence[Fact]:
        return (
            ("client", client_name(self.client_ip), PLAIN),
            ("helo", self.helo, PLAIN),
            ("sasl_username", self.sasl_username, PLAIN),
            ("message-id", self.message_id, PLAIN),
            ("from", self.sender, ADDRESS),
            ("size", self.size, PLAIN),
            ("nrcpt", self.nrcpt, PLAIN),
            ("tls", self.tls, PLAIN),
            ("folded", self.folded or None, PLAIN),
        )


@dataclass(frozen=True, slots=True)
class Rejected(LogEvent):
    """Something the inbound side refused (Postfix's NOQUEUE: reject: line)."""

    name: ClassVar[str] = "reject"
    queue_id: str | None
    client_ip: str | None
    reason: RejectReason
    code: int
    command: str  # as received; an AUTH line without its credentials
    reply: str
    detail: str | None = None

    def fields(self) -> Sequence[Fact]:
        return (
            ("client", client_name(self.client_ip) if self.client_ip else None, PLAIN),
            ("command", self.command, PLAIN),
            ("reason", self.reason.value, PLAIN),
            ("code", self.code, PLAIN),
            ("detail", self.detail, PLAIN),
            ("reply", self.reply, TRAILER),
        )


@dataclass(frozen=True, slots=True)
class PickedUp(LogEvent):
    """A maildrop file (local submission through sendmail) queued: Postfix's pickup line."""

    name: ClassVar[str] = "pickup"
    queue_id: str | None
    uid: int
    user: str
    sender: str
    size: int
    message_id: str | None

    def fields(self) -> Sequence[Fact]:
        return (
            ("uid", self.uid, PLAIN),
            ("user", self.user, PLAIN),
            ("from", self.sender, ADDRESS),
            ("size", self.size, PLAIN),
            ("message-id", self.message_id, PLAIN),
        )


@dataclass(frozen=True, slots=True)
class Expanded(LogEvent):
    """An alias replaced by its addresses where the message entered the queue."""

    name: ClassVar[str] = "expanded"
    queue_id: str | None
    orig_to: str
    to: tuple[str, ...]

    def fields(self) -> Sequence[Fact]:
        return (("orig_to", self.orig_to, ADDRESS), ("to", self.to, ADDRESSES))


@dataclass(frozen=True, slots=True)
class Admin(LogEvent):
    """An admin change (queue hold, release, delete, retry) the daemon applied."""

    name: ClassVar[str] = "admin"
    queue_id: str | None  # None: the whole queue
    action: AdminAction

    def fields(self) -> Sequence[Fact]:
        scope = "message" if self.queue_id else "all"
        return (("action", self.action.value, PLAIN), ("scope", scope, PLAIN))


@dataclass(frozen=True, slots=True)
class Notice(LogEvent):
    """A DSN (bounce, delay warning, relayed report) about a message, queued as a message
    of its own."""

    name: ClassVar[str] = "notice"
    queue_id: str | None
    kind: str  # bounce | delay-warning | relayed (dsn.NoticeKind)
    to: str
    notice_id: str | None  # None: none sent (the null sender, or NOTIFY asked for none)

    def fields(self) -> Sequence[Fact]:
        return (
            ("kind", self.kind, PLAIN),
            ("to", self.to, ADDRESS),
            ("notice_id", self.notice_id or "none", PLAIN),
        )


@dataclass(frozen=True, slots=True)
class Suspended(LogEvent):
    """A destination answered with throttling: its mail waits, untried, until `until`."""

    name: ClassVar[str] = "suspended"
    queue_id: str | None  # the message whose delivery got the reply
    destination: str  # a domain, `route KEY`, or an MX group `mx:.google.com`
    until: str  # UTC, ISO 8601
    seconds: float
    strikes: int  # throttling replies in a row: the back-off doubles with each
    sign: str  # which throttle pattern matched (throttle.py)
    reply: str

    def severity(self) -> int:
        return logging.WARNING

    def fields(self) -> Sequence[Fact]:
        return (
            ("destination", self.destination, PLAIN),
            ("until", self.until, PLAIN),
            ("seconds", self.seconds, SECONDS),
            ("strikes", self.strikes, PLAIN),
            ("sign", self.sign, PLAIN),
            ("reply", self.reply, TRAILER),
        )


@dataclass(frozen=True, slots=True)
class InboundConnection(LogEvent):
    """A client connected or went away (Postfix's connect from / disconnect from)."""

    name: ClassVar[str] = "inbound-connection"
    direction: Direction
    client_ip: str | None
    queue_id: str | None = None

    def severity(self) -> int:
        return logging.DEBUG

    def fields(self) -> Sequence[Fact]:
        return (
            ("direction", self.direction.value, PLAIN),
            ("client", client_name(self.client_ip) if self.client_ip else None, PLAIN),
        )


@dataclass(frozen=True, slots=True)
class OutboundConnection(LogEvent):
    """A connection to a next hop was opened or closed."""

    name: ClassVar[str] = "outbound-connection"
    direction: Direction
    ip: str
    port: int
    queue_id: str | None = None

    def severity(self) -> int:
        return logging.DEBUG

    def fields(self) -> Sequence[Fact]:
        return (
            ("direction", self.direction.value, PLAIN),
            ("relay", f"[{self.ip}]:{self.port}", PLAIN),
        )


def client_name(ip: str) -> str:
    # relaymail does no reverse lookup: Postfix writes "unknown" for a client without one.
    return f"unknown[{ip}]"


def tls_words(used: bool, version: str | None, verified: bool, cipher: str | None = None) -> str:
    """tls=: TLSv1.3/verified, TLSv1.2/unverified (the cipher between, if given), or clear."""
    if not used:
        return "clear"
    middle = f"/{cipher}" if cipher else ""
    return f"{version or 'TLS'}{middle}/{'verified' if verified else 'unverified'}"


def seconds(value: float) -> str:
    # Postfix: two significant digits below 1 s, one decimal below 10 s, whole above.
    if value >= 10:
        return f"{value:.0f}"
    if value >= 0.1:
        return f"{value:.1f}"
    if value >= 0.01:
        return f"{value:.2f}"
    return "0"
