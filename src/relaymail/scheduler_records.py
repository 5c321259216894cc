"""From one delivery's results to what the scheduler writes: the store's recipient
updates and the delivery log events, with the times in the forms they use."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from . import observe
from .active_window import Entry, WaitingRecipient
from .body import MessageBody
from .delivery import RecipientResult, Status
from .dsn import Dsn, NoticeKind, build_notice, recipient_facts
from .dsn_request import NO_DSN, Ret
from .errors import BodyUnreadable
from .queue.store import RecipientState, RecipientUpdate


def recipient_update(
    message_id: str,
    result: RecipientResult,
    status: Status,
    pending: WaitingRecipient,
    now: float,
    reason: str,
) -> RecipientUpdate:
    state = {
        Status.DELIVERED: RecipientState.DELIVERED,
        Status.BOUNCED: RecipientState.BOUNCED,
        Status.DEFERRED: RecipientState.DEFERRED,
    }[status]
    tls = json.dumps(result.tls.to_json())
    return RecipientUpdate(
        message_id, result.recipient, state, pending.attempts, pending.due,
        last_attempt=now, last_reply=result.reply, last_error=reason, tls=tls, host=result.host,
    )  # fmt: skip


def expired_result(result: RecipientResult, reason: str) -> RecipientResult:
    return replace(result, status=Status.BOUNCED, reason=reason)


_STATUS_WORDS = {
    Status.DELIVERED: observe.DeliveryStatus.SENT,
    Status.DEFERRED: observe.DeliveryStatus.DEFERRED,
    Status.BOUNCED: observe.DeliveryStatus.BOUNCED,
}
# RFC 3463 class codes, as Postfix gives them when no reply carried one.
_DEFAULT_DSN = {Status.DELIVERED: "2.0.0", Status.DEFERRED: "4.0.0", Status.BOUNCED: "5.0.0"}


def delivery_event(
    entry: Entry, result: RecipientResult, expired: bool, due: float, started: float, now: float
) -> observe.Delivery:
    """The delivery line of one recipient's outcome (`result` already says bounced if expired)."""
    tls = result.tls
    status = observe.DeliveryStatus.EXPIRED if expired else _STATUS_WORDS[result.status]
    deferred = result.status is Status.DEFERRED
    return observe.Delivery(
        entry.id, result.recipient, status, sender=entry.sender, relay=result.relay,
        delay=round(now - entry.received_at + entry.before_queue, 3),
        delays=observe.Delays(
            entry.before_queue, max(0.0, started - entry.received_at),
            result.setup_seconds, result.transmission_seconds,
        ),
        dsn=result.enhanced_status or _DEFAULT_DSN[result.status],
        tls=observe.tls_words(tls.used, tls.version, tls.verified),
        policy=result.policy, decision=result.decision,
        next_attempt=iso(due) if deferred else None,
        reply=result.reply, reason=result.reason,
    )  # fmt: skip


def iso(timestamp: float) -> str:
    return utc(timestamp).isoformat(timespec="seconds").replace("+00:00", "Z")


def quotable_head(body: MessageBody) -> bytes:
    """The header section a DSN quotes; none when the body cannot be read any more."""
    from . import dsn

    try:
        return dsn.header_section(body.head())
    except BodyUnreadable:
        return b""


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def age_words(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"


def untried_deferral(
    entry: Entry, rcpt: str, pending: WaitingRecipient, until: float, reason: str, now: float
) -> tuple[observe.Delivery, RecipientUpdate]:
    """Postfix's "delivery temporarily suspended": a deferral without an attempt."""
    event = observe.Delivery(
        entry.id, rcpt, observe.DeliveryStatus.DEFERRED, sender=entry.sender,
        delay=round(now - entry.received_at + entry.before_queue, 3), dsn="4.4.1",
        next_attempt=iso(until), reason=f"delivery temporarily suspended: {reason}",
    )  # fmt: skip
    update = RecipientUpdate(
        entry.id, rcpt, RecipientState.DEFERRED, pending.attempts, until,
        last_attempt=None, last_error=f"not tried: {reason}",
    )  # fmt: skip
    return event, update


def entry_notice(
    kind: NoticeKind,
    entry: Entry,
    wanted: Sequence[RecipientResult],
    body: MessageBody,
    *,
    reporting_mta: str,
    now: datetime,
    lifetime: float,
) -> Dsn | None:
    """The DSN of `kind` about `wanted`, as each recipient's NOTIFY and the message's RET ask."""
    request = entry.dsn or NO_DSN
    # The notice may travel in clear: of a REQUIRETLS message (RFC 8689) it
    # quotes nothing, since its Subject: is as private as its body.
    quoted = not entry.requiretls
    return build_notice(
        kind,
        original_sender=entry.sender,
        queue_id=entry.id,
        original_headers=quotable_head(body) if quoted else b"",
        recipients=[
            recipient_facts(r, last_attempt=now, original_recipient=request.of(r.recipient).orcpt)
            for r in wanted
        ],
        reporting_mta=reporting_mta,
        arrival_date=utc(entry.received_at),
        now=now,
        retry_until=utc(entry.received_at + lifetime),
        envid=request.envid,
        original_message=body if quoted and request.ret is Ret.FULL else None,
    )
