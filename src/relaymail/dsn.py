"""Delivery status notifications (RFC 3464): bounces and delay warnings.

Pure functions: facts in, an envelope and message bytes out; no clock, no I/O.

The message is written by mime.py's multipart/report writer (why by hand:
see there), with the fields in the exact RFC 3464 form. Tests parse the
result back with the stdlib parser.

Shape (RFC 6522 multipart/report, report-type=delivery-status):
  1. text/plain: what happened, in plain words, for a person (dsn_text.py);
  2. message/delivery-status: per-message fields, then one block per recipient;
  3. text/rfc822-headers: the header section of the original message, or, in a
     bounce of a message sent with RET=FULL (RFC 3461 4.3), message/rfc822: the
     whole message, when it is at most MAX_RETURNED_MESSAGE.

What the sender asked (dsn_request.py) shows as RFC 3464's fields:
Original-Envelope-Id (ENVID) and, per recipient, Original-Recipient (ORCPT).
Three kinds: a bounce ("failed"), a delay warning ("delayed") and the
"relayed" report for NOTIFY=SUCCESS when the next hop does not offer DSN.

When an address or the original header section is not ASCII (SMTPUTF8 mail),
parts 2 and 3 become message/global-delivery-status and message/global-headers
and non-ASCII addresses use the "utf-8" address type (RFC 6533); such a DSN
needs SMTPUTF8 on its way back, as the original did.

Never bounce a bounce: a message with the null reverse-path gets no DSN
(RFC 5321 4.5.5, RFC 3464 section 1, RFC 3834 section 2).
"""

from __future__ import annotations

import enum
import functools
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import NamedTuple, Protocol

from . import message
from .body import MessageBody
from .dsn_request import Notify, Orcpt, xtext_display
from .dsn_text import About, clean, human_text
from .errors import BodyUnreadable
from .message import Envelope, domain_of
from .mime import Part, crlf_lines, multipart_report
from .smtp.reply import Reply

__all__ = [
    "DeliveryOutcome",
    "Dsn",
    "DsnAction",
    "NoticeKind",
    "RecipientReport",
    "build_bounce",
    "build_delay_warning",
    "build_notice",
    "build_relayed",
    "diagnostic_code_for",
    "header_section",
    "recipient_facts",
    "should_bounce",
    "status_for",
]

# Headers returned to the sender are capped so a message without a blank line
# (all "headers") cannot turn its bounce into a second copy of itself.
MAX_RETURNED_HEADERS = 64 * 1024
# RET=FULL returns the message up to this size, its headers past it (Postfix's
# bounce_size_limit): a sender rarely wants a large attachment back.
MAX_RETURNED_MESSAGE = 1024 * 1024

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;")
_REPLY = re.compile(r"([2-5]\d\d)(?:[ -](.*))?", re.DOTALL)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[\x21-\x7e]{1,250}>)", re.IGNORECASE | re.MULTILINE)

class DeliveryOutcome(Protocol):
    """What `recipient_facts` reads from a delivery result (delivery.RecipientResult).

    Structural, so this module stays free of the delivery engine's imports.
    """

    @property
    def recipient(self) -> str: ...
    @property
    def status(self) -> str: ...  # "delivered" | "deferred" | "bounced"
    @property
    def reason(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def reply(self) -> str | None: ...  # "550 5.1.1 no such user"
    @property
    def enhanced_status(self) -> str | None: ...


class DsnAction(enum.StrEnum):
    """RFC 3464 2.3.3 actions relaymail reports."""

    FAILED = "failed"
    DELAYED = "delayed"
    RELAYED = "relayed"  # to a next hop that does not offer DSN (RFC 3461 6.2.7.2)


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient, in RFC 3464 terms.

    `diagnostic_code` is the whole field value, type included
    ("smtp; 550 5.1.1 no such user"), present when a server answered.
    `reason` is our own explanation for the person reading the text part
    ("no mail server answered for example.org", "gave up after 5.0 days in the
    queue: ..."); it may quote the reply. Dates must be timezone-aware.
    `original_recipient` is the recipient's ORCPT, as received.
    """

    final_recipient: str
    action: DsnAction
    status: str
    remote_mta: str | None = None
    diagnostic_code: str | None = None
    last_attempt: datetime | None = None
    reason: str | None = None
    original_recipient: Orcpt | None = None

    def __post_init__(self) -> None:
        if not _STATUS.fullmatch(self.status):
            raise ValueError(f"{self.status!r} is not an RFC 3463 status code")
        if self.diagnostic_code is not None and not _DIAGNOSTIC_TYPE.match(self.diagnostic_code):
            raise ValueError(f"diagnostic code {self.diagnostic_code!r} has no 'type;' prefix")
        if self.last_attempt is not None:
            _check_aware(self.last_attempt, "last_attempt")

    @classmethod
    def from_reply(
        cls,
        final_recipient: str,
        action: DsnAction,
        reply: Reply,
        *,
        remote_mta: str | None,
        last_attempt: datetime | None,
    ) -> RecipientReport:
        """The report for a recipient whose last answer was `reply`."""
        return cls(
            final_recipient=final_recipient,
            action=action,
            status=status_for(reply),
            remote_mta=remote_mta,
            diagnostic_code=diagnostic_code_for(reply),
            last_attempt=last_attempt,
        )


class NoticeKind(enum.StrEnum):
    """The reports relaymail sends, named as the `notice` log line does."""

    BOUNCE = "bounce"
    DELAY = "delay-warning"
    RELAYED = "relayed"

    @property
    def event(self) -> Notify:
        """The NOTIFY keyword that asks for this report (RFC 3461 4.1)."""
        return _KINDS[self].event


class _KindFacts(NamedTuple):
    event: Notify
    action: DsnAction
    tag: str  # its word in the Message-ID and the MIME boundary
    subject: str
    adjective: str  # of the attached message or headers


_KINDS = {
    NoticeKind.BOUNCE: _KindFacts(Notify.FAILURE, DsnAction.FAILED, "bounce",
                                  "Undelivered Mail Returned to Sender", "Undelivered"),
    NoticeKind.DELAY: _KindFacts(Notify.DELAY, DsnAction.DELAYED, "delay",
                                 "Delayed Mail (still being retried)", "Delayed"),
    NoticeKind.RELAYED: _KindFacts(Notify.SUCCESS, DsnAction.RELAYED, "relayed",
                                   "Successful Mail Delivery Report", "Relayed"),
}  # fmt: skip


class Dsn(NamedTuple):
    """A notification ready to enqueue: null reverse-path, to the original sender.

    A named tuple so that `envelope, data = build_bounce(...)` also reads well.
    """

    envelope: Envelope
    data: bytes


def should_bounce(sender: str) -> bool:
    """Whether a message from `sender` may get a DSN: never for the null sender."""
    return sender != ""


def status_for(reply: Reply) -> str:
    """The reply's enhanced status code, else one derived from its class (550 -> 5.0.0)."""
    return reply.enhanced or f"{reply.kind}.0.0"


def diagnostic_code_for(reply: Reply) -> str:
    return f"smtp; {reply}"


_ACTIONS = {
    "bounced": (DsnAction.FAILED, "5.0.0"),
    "deferred": (DsnAction.DELAYED, "4.0.0"),
    "delivered": (DsnAction.RELAYED, "2.0.0"),
}


def recipient_facts(
    result: DeliveryOutcome,
    *,
    last_attempt: datetime | None = None,
    original_recipient: Orcpt | None = None,
) -> RecipientReport:
    """The report for one result of the delivery engine.

    Bounced becomes "failed" (also when a deferral expired: its last status,
    4.x.x, then says the failure was persistently transient, RFC 3463 3.1);
    deferred "delayed"; delivered "relayed" (we report success only for a next
    hop that does not offer DSN).
    """
    if result.status not in _ACTIONS:
        raise ValueError(f"{result.recipient}: a {result.status} recipient gets no DSN")
    action, default_status = _ACTIONS[result.status]
    reply = _parse_reply(result.reply) if result.reply else None
    if result.enhanced_status and _STATUS.fullmatch(result.enhanced_status):
        status = result.enhanced_status
    elif reply is not None:
        status = status_for(reply)
    else:
        status = default_status
    return RecipientReport(
        final_recipient=result.recipient,
        action=action,
        status=status,
        remote_mta=result.host,
        diagnostic_code=diagnostic_code_for(reply) if reply is not None else None,
        last_attempt=last_attempt,
        reason=result.reason or None,
        original_recipient=original_recipient,
    )


def _parse_reply(text: str) -> Reply | None:
    match = _REPLY.match(text.strip())
    if match is None:
        return None
    return Reply(int(match.group(1)), (match.group(2) or "",))


def header_section(data: bytes) -> bytes:
    """The original header section (without the blank line), from canonical data."""
    headers = message.header_section(data)
    if len(headers) > MAX_RETURNED_HEADERS:
        cut = headers.rfind(b"\r\n", 0, MAX_RETURNED_HEADERS)
        headers = headers[: cut + 2] if cut > 0 else b""
    return headers


def build_notice(
    kind: NoticeKind,
    *,
    original_sender: str,
    queue_id: str,
    original_headers: bytes,
    recipients: Sequence[RecipientReport],
    reporting_mta: str,
    arrival_date: datetime,
    now: datetime,
    retry_until: datetime | None = None,
    envid: str | None = None,
    original_message: MessageBody | None = None,
) -> Dsn | None:
    """The report of `kind` for `recipients` (all of its action); None for the null sender.

    `retry_until` (a delay warning's): when the message will be bounced if still
    undelivered. `envid`: the message's ENVID (xtext). `original_message` (a
    bounce's, for RET=FULL): returned whole unless it is over MAX_RETURNED_MESSAGE
    or unreadable, when its headers are.
    """
    if kind is NoticeKind.DELAY:
        if retry_until is None:
            raise ValueError("a delay warning needs retry_until")
        _check_aware(retry_until, "retry_until")
    else:
        retry_until = None
    if kind is not NoticeKind.BOUNCE:
        original_message = None  # RFC 3461 4.3: RET is about failure reports
    return _build(
        kind,
        original_sender=original_sender,
        queue_id=queue_id,
        original_headers=original_headers,
        recipients=recipients,
        reporting_mta=reporting_mta,
        arrival_date=arrival_date,
        now=now,
        retry_until=retry_until,
        envid=envid,
        original_message=original_message,
    )


build_bounce = functools.partial(build_notice, NoticeKind.BOUNCE)
build_delay_warning = functools.partial(build_notice, NoticeKind.DELAY)
build_relayed = functools.partial(build_notice, NoticeKind.RELAYED)
"""A success report for NOTIFY=SUCCESS recipients delivered to a next hop without DSN."""


# ---------------------------------------------------------------------------


def _check_aware(when: datetime, name: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _build(
    kind: NoticeKind,
    *,
    original_sender: str,
    queue_id: str,
    original_headers: bytes,
    recipients: Sequence[RecipientReport],
    reporting_mta: str,
    arrival_date: datetime,
    now: datetime,
    retry_until: datetime | None,
    envid: str | None = None,
    original_message: MessageBody | None = None,
) -> Dsn | None:
    if not should_bounce(original_sender):
        return None
    facts = _KINDS[kind]
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    for report in recipients:
        if report.action is not facts.action:
            raise ValueError(
                f"{report.final_recipient}: action {report.action} in a {facts.tag} report"
            )
    _check_aware(arrival_date, "arrival_date")
    _check_aware(now, "now")
    mta = domain_of(f"postmaster@{reporting_mta}")  # IDNA A-label form, lower case

    international = (
        not original_sender.isascii()
        or not original_headers.isascii()
        or any(not r.final_recipient.isascii() for r in recipients)
        or any(not r.original_recipient.display.isascii() for r in recipients
               if r.original_recipient is not None)
    )  # fmt: skip
    whole = _whole(original_message)
    if whole is not None:
        returned = "Your message is attached."
    elif original_message is not None:
        returned = (
            "The headers of your message are attached (the whole message is larger"
            " than this mail system returns)."
        )
    else:
        returned = "The headers of your message are attached."
    about = About(mta, queue_id, arrival_date, tuple(recipients), retry_until, international)
    human = human_text(kind, about, returned)
    status = _delivery_status(about, envid)
    parts = [
        Part(
            [
                "Content-Description: Notification",
                "Content-Type: text/plain; charset=utf-8",
                f"Content-Transfer-Encoding: {'8bit' if international else '7bit'}",
            ],
            human,
        ),
        Part(
            [
                "Content-Description: Delivery report",
                "Content-Type: message/global-delivery-status"
                if international
                else "Content-Type: message/delivery-status",
            ],
            status,
        ),
    ]
    if whole is not None:
        eight_bit = not whole.isascii()
        parts.append(_returned_message(facts, whole, international, eight_bit))
    else:
        eight_bit = False
        parts.append(_returned_headers(facts, original_headers, international))
    stamp = int(now.timestamp())
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{original_sender}>",
        f"Subject: {facts.subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{stamp}.{facts.tag}.{queue_id}@{mta}>",
    ]
    original_id = _MESSAGE_ID.search(original_headers)
    if original_id is not None:
        reference = original_id.group(1).decode("ascii")
        top += [f"In-Reply-To: {reference}", f"References: {reference}"]
    top.append("Auto-Submitted: auto-replied")  # RFC 3834 5: nobody should answer this
    data = multipart_report(
        top,
        "delivery-status",
        parts,
        boundary_prefix=f"{queue_id}.{stamp}/{facts.tag}",
        eight_bit=international or eight_bit,
    )
    return Dsn(Envelope("", (original_sender,)), data)


def _whole(message: MessageBody | None) -> bytes | None:
    """The message to return whole, if there is one within the limit that can be read."""
    if message is None or message.size > MAX_RETURNED_MESSAGE:
        return None
    try:
        return message.read_all()
    except BodyUnreadable:
        return None


def _returned_headers(facts: _KindFacts, headers: bytes, international: bool) -> Part:
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    return Part(
        [
            f"Content-Description: {facts.adjective} Message Headers",
            "Content-Type: message/global-headers"
            if international
            else "Content-Type: text/rfc822-headers",
        ]
        + (["Content-Transfer-Encoding: 8bit"] if international else []),
        headers,
    )


def _returned_message(facts: _KindFacts, data: bytes, international: bool, eight_bit: bool) -> Part:
    """RET=FULL: the message itself (RFC 6522 3); message/global for SMTPUTF8 mail (RFC 6532)."""
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return Part(
        [
            f"Content-Description: {facts.adjective} Message",
            "Content-Type: message/global" if international else "Content-Type: message/rfc822",
        ]
        + (["Content-Transfer-Encoding: 8bit"] if eight_bit else []),
        data,
    )


def _field(name: str, value: str) -> str:
    """One RFC 3464 field, folded at spaces so lines stay short (RFC 5322 2.2.3).

    The space textwrap drops at a break comes back as the one-space indent, so
    unfolding (removing CRLF) restores the value exactly.
    """
    pieces = textwrap.wrap(
        f"{name}: {value}",
        width=78,
        subsequent_indent=" ",
        break_long_words=True,
        break_on_hyphens=False,
    )
    return "\r\n".join(pieces)


def _address_field(name: str, address: str) -> str:
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{name}: {kind}; {clean(address, True)}"


def _delivery_status(about: About, envid: str | None) -> bytes:
    mta, queue_id, arrival_date, recipients, retry_until, international = about
    # RFC 3464 2.2, 2.3: the ENVID and each ORCPT first in their blocks, decoded for
    # the reader (xtext is the SMTP envelope's encoding, not the report's).
    first = [f"Original-Envelope-Id: {xtext_display(envid)}"] if envid is not None else []
    blocks = [
        [
            *first,
            f"Reporting-MTA: dns; {mta}",
            f"X-Relaymail-Queue-ID: {queue_id}",
            f"Arrival-Date: {format_datetime(arrival_date)}",
        ]
    ]
    for report in recipients:
        original = report.original_recipient
        block = [f"Original-Recipient: {clean(original.display, True)}"] if original else []
        block += [
            _address_field("Final-Recipient", report.final_recipient),
            f"Action: {report.action}",
            f"Status: {report.status}",
        ]
        if report.remote_mta:
            block.append(f"Remote-MTA: dns; {clean(report.remote_mta, False)}")
        if report.diagnostic_code:
            block.append(_field("Diagnostic-Code", clean(report.diagnostic_code, international)))
        if report.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {format_datetime(report.last_attempt)}")
        if retry_until is not None:
            block.append(f"Will-Retry-Until: {format_datetime(retry_until)}")
        blocks.append(block)
    return b"\r\n".join(crlf_lines(block) for block in blocks)
