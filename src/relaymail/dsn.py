"""Delivery status notifications (RFC 3464): bounces and delay warnings.

Pure functions: facts in, an envelope and message bytes out; no clock, no I/O.

The message is written by mime.py's multipart/report writer (why by hand:
see there), with the fields in the exact RFC 3464 form. Tests parse the
result back with the stdlib parser.

Shape (RFC 6522 multipart/report, report-type=delivery-status):
  1. text/plain: what happened, in plain words, for a person;
  2. message/delivery-status: per-message fields, then one block per recipient;
  3. text/rfc822-headers: the header section of the original message.

When an address or the original header section is not ASCII (SMTPUTF8 mail),
parts 2 and 3 become message/global-delivery-status and message/global-headers
and non-ASCII addresses use the "utf-8" address type (RFC 6533); such a DSN
needs SMTPUTF8 on its way back, as the original did.

Never bounce a bounce: a message with the null reverse-path gets no DSN
(RFC 5321 4.5.5, RFC 3464 section 1, RFC 3834 section 2).
"""

from __future__ import annotations

import enum
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import NamedTuple, Protocol

from . import message
from .headers import foreign_text
from .message import Envelope, domain_of
from .mime import Part, crlf_lines, multipart_report
from .smtp.reply import Reply

__all__ = [
    "DeliveryOutcome",
    "Dsn",
    "DsnAction",
    "RecipientReport",
    "build_bounce",
    "build_delay_warning",
    "diagnostic_code_for",
    "header_section",
    "recipient_facts",
    "should_bounce",
    "status_for",
]

# Headers returned to the sender are capped so a message without a blank line
# (all "headers") cannot turn its bounce into a second copy of itself.
MAX_RETURNED_HEADERS = 64 * 1024
# A diagnostic is someone else's text; keep it readable and bounded.
MAX_DIAGNOSTIC = 1000

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;")
_REPLY = re.compile(r"([2-5]\d\d)(?:[ -](.*))?", re.DOTALL)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[\x21-\x7e]{1,250}>)", re.IGNORECASE | re.MULTILINE)

# RFC 3463 subject.detail codes a sender meets most, in plain words.
_STATUS_WORDS = {
    "1.1": "The mailbox does not exist.",
    "1.2": "The destination domain does not exist or cannot receive mail.",
    "1.10": "The destination domain declares that it accepts no mail (null MX).",
    "2.1": "The mailbox is disabled and not accepting messages.",
    "2.2": "The mailbox is full.",
    "2.3": "The message is larger than the mailbox accepts.",
    "3.4": "The message is larger than the destination server accepts.",
    "4.1": "The destination mail server did not answer.",
    "4.2": "The connection to the destination mail server broke off.",
    "4.4": "No route to the destination could be found.",
    "4.7": "The message could not be delivered within the time allowed.",
    "7.1": "The destination refused the message by its policy.",
    "7.10": "Encryption was required but could not be set up.",
}


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


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient, in RFC 3464 terms.

    `diagnostic_code` is the whole field value, type included
    ("smtp; 550 5.1.1 no such user"), present when a server answered.
    `reason` is our own explanation for the person reading the text part
    ("no mail server answered for example.org", "gave up after 5.0 days in the
    queue: ..."); it may quote the reply. Dates must be timezone-aware.
    """

    final_recipient: str
    action: DsnAction
    status: str
    remote_mta: str | None = None
    diagnostic_code: str | None = None
    last_attempt: datetime | None = None
    reason: str | None = None

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


def recipient_facts(
    result: DeliveryOutcome, *, last_attempt: datetime | None = None
) -> RecipientReport:
    """The report for one bounced or deferred result of the delivery engine.

    Bounced becomes "failed" (also when a deferral expired: its last status,
    4.x.x, then says the failure was persistently transient, RFC 3463 3.1).
    """
    if result.status == "bounced":
        action = DsnAction.FAILED
    elif result.status == "deferred":
        action = DsnAction.DELAYED
    else:
        raise ValueError(f"{result.recipient}: a {result.status} recipient gets no DSN")
    reply = _parse_reply(result.reply) if result.reply else None
    if result.enhanced_status and _STATUS.fullmatch(result.enhanced_status):
        status = result.enhanced_status
    elif reply is not None:
        status = status_for(reply)
    else:
        status = "5.0.0" if action is DsnAction.FAILED else "4.0.0"
    return RecipientReport(
        final_recipient=result.recipient,
        action=action,
        status=status,
        remote_mta=result.host,
        diagnostic_code=diagnostic_code_for(reply) if reply is not None else None,
        last_attempt=last_attempt,
        reason=result.reason or None,
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


def build_bounce(
    *,
    original_sender: str,
    queue_id: str,
    original_headers: bytes,
    recipients: Sequence[RecipientReport],
    reporting_mta: str,
    arrival_date: datetime,
    now: datetime,
) -> Dsn | None:
    """The non-delivery report for `recipients` (all FAILED); None for the null sender."""
    return _build(
        _Kind.BOUNCE,
        original_sender=original_sender,
        queue_id=queue_id,
        original_headers=original_headers,
        recipients=recipients,
        reporting_mta=reporting_mta,
        arrival_date=arrival_date,
        now=now,
        retry_until=None,
    )


def build_delay_warning(
    *,
    original_sender: str,
    queue_id: str,
    original_headers: bytes,
    recipients: Sequence[RecipientReport],
    reporting_mta: str,
    arrival_date: datetime,
    retry_until: datetime,
    now: datetime,
) -> Dsn | None:
    """The delay warning for `recipients` (all DELAYED); None for the null sender.

    `retry_until` is when the message will be bounced if still undelivered.
    """
    _check_aware(retry_until, "retry_until")
    return _build(
        _Kind.DELAY,
        original_sender=original_sender,
        queue_id=queue_id,
        original_headers=original_headers,
        recipients=recipients,
        reporting_mta=reporting_mta,
        arrival_date=arrival_date,
        now=now,
        retry_until=retry_until,
    )


# ---------------------------------------------------------------------------


class _Kind(enum.Enum):
    BOUNCE = (DsnAction.FAILED, "bounce", "Undelivered Mail Returned to Sender")
    DELAY = (DsnAction.DELAYED, "delay", "Delayed Mail (still being retried)")

    def __init__(self, action: DsnAction, tag: str, subject: str) -> None:
        self.action = action
        self.tag = tag
        self.subject = subject


def _check_aware(when: datetime, name: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _build(
    kind: _Kind,
    *,
    original_sender: str,
    queue_id: str,
    original_headers: bytes,
    recipients: Sequence[RecipientReport],
    reporting_mta: str,
    arrival_date: datetime,
    now: datetime,
    retry_until: datetime | None,
) -> Dsn | None:
    if not should_bounce(original_sender):
        return None
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    for report in recipients:
        if report.action is not kind.action:
            raise ValueError(
                f"{report.final_recipient}: action {report.action} in a {kind.tag} report"
            )
    _check_aware(arrival_date, "arrival_date")
    _check_aware(now, "now")
    mta = domain_of(f"postmaster@{reporting_mta}")  # IDNA A-label form, lower case

    international = (
        not original_sender.isascii()
        or not original_headers.isascii()
        or any(not r.final_recipient.isascii() for r in recipients)
    )
    human = _human_text(mta, queue_id, arrival_date, recipients, retry_until, international)
    status = _delivery_status(mta, queue_id, arrival_date, recipients, retry_until, international)
    headers = original_headers
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"

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
        Part(
            [
                "Content-Description: Undelivered Message Headers"
                if kind is _Kind.BOUNCE
                else "Content-Description: Delayed Message Headers",
                "Content-Type: message/global-headers"
                if international
                else "Content-Type: text/rfc822-headers",
            ]
            + (["Content-Transfer-Encoding: 8bit"] if international else []),
            headers,
        ),
    ]
    stamp = int(now.timestamp())
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{original_sender}>",
        f"Subject: {kind.subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{stamp}.{kind.tag}.{queue_id}@{mta}>",
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
        boundary_prefix=f"{queue_id}.{stamp}/{kind.tag}",
        eight_bit=international,
    )
    return Dsn(Envelope("", (original_sender,)), data)


def _clean(text: str, international: bool) -> str:
    """Someone else's text made safe for one header field or text line.

    A remote reply is decoded with replacement, so it can hold C1 controls and
    U+2028 (line breaks to str.splitlines() readers) once the DSN is 8-bit.
    """
    text = foreign_text(text)
    if not international:
        text = text.encode("ascii", errors="replace").decode("ascii")
    if len(text) > MAX_DIAGNOSTIC:
        text = text[: MAX_DIAGNOSTIC - 3] + "..."
    return text


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
    return f"{name}: {kind}; {_clean(address, True)}"


def _delivery_status(
    mta: str,
    queue_id: str,
    arrival_date: datetime,
    recipients: Sequence[RecipientReport],
    retry_until: datetime | None,
    international: bool,
) -> bytes:
    blocks = [
        [
            f"Reporting-MTA: dns; {mta}",
            f"X-Relaymail-Queue-ID: {queue_id}",
            f"Arrival-Date: {format_datetime(arrival_date)}",
        ]
    ]
    for report in recipients:
        block = [
            _address_field("Final-Recipient", report.final_recipient),
            f"Action: {report.action}",
            f"Status: {report.status}",
        ]
        if report.remote_mta:
            block.append(f"Remote-MTA: dns; {_clean(report.remote_mta, False)}")
        if report.diagnostic_code:
            block.append(_field("Diagnostic-Code", _clean(report.diagnostic_code, international)))
        if report.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {format_datetime(report.last_attempt)}")
        if retry_until is not None:
            block.append(f"Will-Retry-Until: {format_datetime(retry_until)}")
        blocks.append(block)
    return b"\r\n".join(crlf_lines(block) for block in blocks)


def _explain(report: RecipientReport, international: bool) -> list[str]:
    lines = []
    reason = _clean(report.reason, international) if report.reason else ""
    if report.diagnostic_code:
        answer = _clean(report.diagnostic_code.split(";", 1)[1].strip(), international)
        if answer not in reason:  # else the reason already quotes it, with context
            server = report.remote_mta or "the destination mail server"
            lines.append(f"The mail server {server} answered: {answer}")
    if reason:
        lines.append(reason)
    words = _STATUS_WORDS.get(report.status.split(".", 1)[1])
    if words:
        lines.append(f"({words})")
    if not lines:
        lines.append(f"Status {report.status}.")
    return lines


def _human_text(
    mta: str,
    queue_id: str,
    arrival_date: datetime,
    recipients: Sequence[RecipientReport],
    retry_until: datetime | None,
    international: bool,
) -> bytes:
    received = format_datetime(arrival_date)
    if retry_until is None:  # a bounce
        intro = (
            f"Your message (queue id {queue_id}, received {received}) could not be"
            " delivered to the recipients listed below. This is a permanent failure:"
            " the mail system has given up and will not try again. The reason is given"
            " for each recipient."
        )
        closing = (
            "The headers of your message are attached. If you need help, forward"
            " this report to your mail administrator."
        )
    else:
        intro = (
            f"Your message (queue id {queue_id}, received {received}) has not been"
            " delivered yet to the recipients listed below. This is only a warning:"
            " you do not need to send the message again. The mail system keeps"
            f" trying to deliver it until {format_datetime(retry_until)}; if it still"
            " cannot be delivered by then, it will be returned to you with another"
            " report."
        )
        closing = "The headers of your message are attached."

    paragraphs = [f"This is the mail system at {mta}.", intro]
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += textwrap.wrap(paragraph, width=72)
        lines.append("")
    for report in recipients:
        lines.append(f"<{_clean(report.final_recipient, international)}>")
        for explanation in _explain(report, international):
            lines += textwrap.wrap(
                explanation,
                width=76,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        lines.append("")
    lines += textwrap.wrap(closing, width=72)
    return crlf_lines(lines)
