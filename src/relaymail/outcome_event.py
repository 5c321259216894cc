"""The delivery event of one recipient's outcome: what its log line and metrics say."""

from __future__ import annotations

from datetime import UTC, datetime

from . import observe
from .active_window import Entry
from .delivery import RecipientResult, Status

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
        next_attempt=iso_time(due) if deferred else None,
        reply=result.reply, reason=result.reason,
    )  # fmt: skip


def iso_time(timestamp: float) -> str:
    """A time for a log line: UTC, seconds, `Z`."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
