"""Rows of the queue's SQL backends as the Store's values: one mapping for SQLite and PostgreSQL.

Both backends select the same columns in the same order (the constants and
the docstrings say which), so what a row means is written once here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..dsn_request import DsnRequest, RecipientDsn, Ret
from ..message import Envelope
from .ids import format_queue_id, parse_queue_id
from .schema import PENDING
from .store import (
    AdminAction,
    AdminEvent,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    PendingMessage,
    PendingRecipient,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    RecipientUpdate,
    Tally,
)

_STATE = {state.value: state for state in RecipientState}

RECIPIENT_COLUMNS = (
    "address, state, attempts, next_attempt, last_attempt, last_reply, last_error, tls, host,"
    " notify, orcpt"
)
MESSAGE_COLUMNS = "sender, size, received_at, held, warned, requiretls, ret, envid"
EVENT_COLUMNS = "id, message_id, action, at"


def recipient_detail(row: Any) -> RecipientDetail:
    """A row of RECIPIENT_COLUMNS."""
    return RecipientDetail(
        address=row[0],
        state=RecipientState(row[1]),
        attempts=row[2],
        next_attempt=row[3],
        last_attempt=row[4],
        last_reply=row[5],
        last_error=row[6],
        tls=None if row[7] is None else json.loads(row[7]),
        host=row[8],
        dsn=RecipientDsn.from_stored(row[9], row[10]),
    )


def message_detail(qid: int, message: Any, recipients: list[Any]) -> MessageDetail:
    """A row of MESSAGE_COLUMNS and its recipients' rows of RECIPIENT_COLUMNS."""
    return MessageDetail(
        id=format_queue_id(qid),
        sender=message[0],
        size=message[1],
        received_at=message[2],
        held=bool(message[3]),
        warned=bool(message[4]),
        recipients=tuple(map(recipient_detail, recipients)),
        requiretls=bool(message[5]),
        ret=None if message[6] is None else Ret(message[6]),
        envid=message[7],
    )


def recipients_by_message(rows: list[Any]) -> dict[str, tuple[RecipientDetail, ...]]:
    """Rows of (message id, RECIPIENT_COLUMNS...) in message and envelope order."""
    found: dict[str, list[RecipientDetail]] = {}
    for row in rows:
        found.setdefault(format_queue_id(row[0]), []).append(recipient_detail(row[1:]))
    return {message_id: tuple(details) for message_id, details in found.items()}


def message_summary(row: Any) -> MessageSummary:
    """id, sender, size, received_at, held, warned, the four state counts, next attempt."""
    return MessageSummary(
        id=format_queue_id(row[0]),
        sender=row[1],
        size=row[2],
        received_at=row[3],
        held=bool(row[4]),
        warned=bool(row[5]),
        recipients=RecipientCounts(row[6], row[7], row[8], row[9]),
        next_attempt=row[10],
    )


def admin_event(row: Any) -> AdminEvent:
    """A row of EVENT_COLUMNS."""
    return AdminEvent(
        id=row[0],
        message_id=None if row[1] is None else format_queue_id(row[1]),
        action=AdminAction(row[2]),
        at=row[3],
    )


def queue_stats(totals: Any, by_state: dict[str, int], now: float) -> QueueStats:
    """(messages, held, bytes, oldest received_at) and the recipients counted by state."""
    messages, held, total_bytes, oldest = totals
    return QueueStats(
        messages=messages,
        held=int(held),
        total_bytes=int(total_bytes),
        recipients=RecipientCounts(
            queued=by_state.get(RecipientState.QUEUED.value, 0),
            deferred=by_state.get(RecipientState.DEFERRED.value, 0),
            delivered=by_state.get(RecipientState.DELIVERED.value, 0),
            bounced=by_state.get(RecipientState.BOUNCED.value, 0),
        ),
        oldest_received_at=oldest,
        oldest_age=None if oldest is None else max(0.0, now - oldest),
    )


def group_pending(rows: list[Any]) -> list[PendingMessage]:
    """Rows of the pending query (ordered by message, then envelope order) as messages.

    Columns: m.id, sender, received_at, size, held, warned, r.address, state,
    attempts, next_attempt, requiretls, ret, envid, notify, orcpt.
    """
    pending: list[PendingMessage] = []
    recipients: list[PendingRecipient] = []
    first = None
    for row in rows:
        if first is None or row[0] != first[0]:
            if first is not None:
                pending.append(_pending_message(first, recipients))
            first, recipients = row, []
        recipients.append(
            PendingRecipient(
                row[6], _STATE[row[7]], row[8], row[9], RecipientDsn.from_stored(row[13], row[14])
            )
        )
    if first is not None:
        pending.append(_pending_message(first, recipients))
    return pending


def _pending_message(row: Any, recipients: list[PendingRecipient]) -> PendingMessage:
    return PendingMessage(
        id=format_queue_id(row[0]),
        sender=row[1],
        received_at=row[2],
        size=row[3],
        held=bool(row[4]),
        warned=bool(row[5]),
        recipients=tuple(recipients),
        requiretls=bool(row[10]),
        ret=None if row[11] is None else Ret(row[11]),
        envid=row[12],
    )


def update_rows(updates: Sequence[RecipientUpdate]) -> list[tuple[Any, ...]]:
    """Outcomes as the UPDATE of both backends takes them: the new values, then the key
    (message id, recipient). ValueError for an id that is not a queue id (a bug)."""
    rows = []
    for update in updates:
        qid = parse_queue_id(update.message_id)
        if qid is None:
            raise ValueError(f"not a queue id: {update.message_id!r}")
        rows.append(
            (
                update.state.value, update.attempts, update.next_attempt, update.last_attempt,
                update.last_reply, update.last_error, update.tls, update.host,
                qid, update.recipient,
            )
        )  # fmt: skip
    return rows


def queued_envelope(envelope: Envelope) -> Envelope:
    """The envelope with each recipient once, as every backend queues it."""
    recipients = tuple(dict.fromkeys(envelope.recipients))
    if recipients == envelope.recipients:
        return envelope
    return envelope.with_recipients(recipients)


def stored_message_dsn(dsn: DsnRequest | None) -> tuple[str | None, str | None]:
    """RET and ENVID as the message table keeps them (wire forms, NULL when not given)."""
    if dsn is None:
        return None, None
    return None if dsn.ret is None else dsn.ret.value, dsn.envid


def stored_recipient_dsn(dsn: DsnRequest | None, recipient: str) -> tuple[str | None, str | None]:
    """NOTIFY and ORCPT of `recipient` as the recipient table keeps them (wire forms)."""
    if dsn is None:
        return None, None
    notify, orcpt = dsn.of(recipient)
    return None if notify is None else notify.wire, None if orcpt is None else orcpt.wire


def breakdown_queries(domain: str, mark: str, limit: int) -> tuple[tuple[str, Any], ...]:
    """The two reads of `pending_breakdown`: pending recipients by destination domain and
    deferred ones by reason. `domain`: the dialect's expression of an address's domain;
    `mark`: its parameter placeholder."""
    return (
        (f"SELECT {domain} AS d, count(*) AS n FROM recipient WHERE state IN ({mark}, {mark})"
         f" GROUP BY d ORDER BY n DESC, d LIMIT {mark}", (*PENDING, limit)),
        ("SELECT coalesce(last_error, last_reply, '-') AS why, count(*) AS n FROM recipient"
         f" WHERE state = {mark} GROUP BY why ORDER BY n DESC, why LIMIT {mark}",
         (RecipientState.DEFERRED.value, limit)),
    )  # fmt: skip


def pending_breakdown(destinations: list[Any], reasons: list[Any]) -> PendingBreakdown:
    """The rows of the two `breakdown_queries`."""
    return PendingBreakdown(
        tuple(Tally(row[0], row[1]) for row in destinations),
        tuple(Tally(row[0], row[1]) for row in reasons),
    )
