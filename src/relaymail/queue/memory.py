"""The `Store` protocol in memory: nothing survives the process.

A second backend that keeps the whole contract (see `store.py`) except
durability across restarts: it proves the protocol carries no SQLite
assumptions, and it lets the scheduler be tested without files or threads.
Every write is applied at once and completely, so "durable when it returns"
holds for the life of the object.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..body import CHUNK_SIZE, MessageBody
from ..dsn_request import NO_DSN, NO_RECIPIENT_DSN, DsnRequest, RecipientDsn
from ..errors import BodyUnreadable, RelaymailError
from ..message import Envelope
from ..message_data import MessageData
from .ids import format_queue_id, parse_queue_id
from .selection import CHANGES, AdminOutcome
from .store import (
    AdminAction,
    AdminEvent,
    DueBatch,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    PendingMessage,
    PendingRecipient,
    QueuedMessage,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    RecipientUpdate,
    Tally,
    TraceHeader,
)

if TYPE_CHECKING:
    from .selection import Selection
    from .store import Store

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Recipient:
    address: str
    state: RecipientState = RecipientState.QUEUED
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_reply: str | None = None
    last_error: str | None = None
    tls: str | None = None
    host: str | None = None
    dsn: RecipientDsn = NO_RECIPIENT_DSN

    @property
    def pending(self) -> bool:
        return not self.state.is_final


@dataclass(slots=True)
class _Message:
    id: str
    sender: str
    received_at: float
    data: bytes
    recipients: dict[str, _Recipient]  # in envelope order
    held: bool = False
    warned: bool = False
    requiretls: bool = False
    dsn: DsnRequest = NO_DSN
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.data)

    def about(self) -> dict[str, Any]:
        """The fields every view of a message (pending, summary, detail) starts with."""
        return {
            "id": self.id,
            "sender": self.sender,
            "size": self.size,
            "received_at": self.received_at,
            "held": self.held,
            "warned": self.warned,
        }

    def counts(self) -> RecipientCounts:
        states = [r.state for r in self.recipients.values()]
        return RecipientCounts(*(states.count(s) for s in _COUNTED))


def _detail(r: _Recipient) -> RecipientDetail:
    return RecipientDetail(
        address=r.address,
        state=r.state,
        attempts=r.attempts,
        next_attempt=r.next_attempt,
        last_attempt=r.last_attempt,
        last_reply=r.last_reply,
        last_error=r.last_error,
        tls=None if r.tls is None else json.loads(r.tls),
        host=r.host,
        dsn=r.dsn,
    )


_COUNTED = (
    RecipientState.QUEUED,
    RecipientState.DEFERRED,
    RecipientState.DELIVERED,
    RecipientState.BOUNCED,
)


class MemoryStore:
    """The `Store` protocol on a dict. `clock` stamps admin events (wall clock by default)."""

    def __init__(
        self, clock: Callable[[], float] = time.time, *, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self._clock = clock
        self.chunk_size = chunk_size  # of the bodies open_body() reads
        self._messages: dict[str, _Message] = {}  # insertion order is queue-id order
        self._events: list[AdminEvent] = []
        self._last_id = 0
        self._pickups: dict[str, str] = {}
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    # -- writes --------------------------------------------------------------

    async def enqueue(
        self,
        envelope: Envelope,
        data: bytes | MessageData,
        received_at: float,
        *,
        trace: TraceHeader | None = None,
        pickup: str | None = None,
    ) -> QueuedMessage:
        self._writable()
        recipients = tuple(dict.fromkeys(envelope.recipients))
        if recipients != envelope.recipients:
            envelope = envelope.with_recipients(recipients)
        # The same ids as SQLite's: microseconds, strictly increasing.
        self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        queue_id = format_queue_id(self._last_id)
        header = b"" if trace is None else trace(queue_id)
        message = _Message(
            queue_id,
            envelope.sender,
            received_at,
            header + (data.read() if isinstance(data, MessageData) else data),
            {
                r: _Recipient(r, next_attempt=received_at, dsn=envelope.dsn_request.of(r))
                for r in recipients
            },
            requiretls=envelope.requiretls,
            dsn=envelope.dsn_request,
        )
        self._messages[message.id] = message
        if pickup is not None:
            self._pickups[pickup] = message.id
        return QueuedMessage(message.id, envelope, message.size, received_at, header)

    async def record(self, updates: Sequence[RecipientUpdate]) -> None:
        self._writable()
        for update in updates:
            if parse_queue_id(update.message_id) is None:
                raise ValueError(f"not a queue id: {update.message_id!r}")
        for update in updates:
            message = self._messages.get(update.message_id)
            recipient = None if message is None else message.recipients.get(update.recipient)
            if recipient is None:
                continue  # deleted meanwhile: nothing to update
            recipient.state = update.state
            recipient.attempts = update.attempts
            recipient.next_attempt = update.next_attempt
            recipient.last_attempt = update.last_attempt
            recipient.last_reply = update.last_reply
            recipient.last_error = update.last_error
            recipient.tls = update.tls
            recipient.host = update.host
        for message_id in dict.fromkeys(u.message_id for u in updates):
            message = self._messages.get(message_id)
            if message is not None and not any(r.pending for r in message.recipients.values()):
                del self._messages[message_id]

    async def claim(self, message_id: str) -> bool:
        return True  # one node's queue: every delivery is this node's

    async def wait_admin_event(self, timeout: float) -> None:
        await asyncio.sleep(timeout)  # nothing tells: the caller polls

    async def mark_warned(self, message_id: str) -> bool:
        self._writable()
        message = self._messages.get(message_id)
        if message is None:
            return False
        message.warned = True
        return True

    async def set_hold(self, message_id: str, held: bool) -> bool:
        self._writable()
        message = self._messages.get(message_id)
        if message is None:
            return False
        message.held = held
        self._append_event(message_id, AdminAction.HOLD if held else AdminAction.RELEASE)
        return True

    async def delete(self, message_id: str) -> bool:
        self._writable()
        if self._messages.pop(message_id, None) is None:
            return False
        self._append_event(message_id, AdminAction.DELETE)
        return True

    async def forget_pickups(self, names: Sequence[str]) -> None:
        self._writable()
        for name in names:
            self._pickups.pop(name, None)

    async def retry(self, message_id: str | None = None, *, now: float | None = None) -> int:
        self._writable()
        if message_id is None:
            messages = list(self._messages.values())
        elif message_id in self._messages:
            messages = [self._messages[message_id]]
        else:
            return 0
        when = time.time() if now is None else now
        moved = 0
        for message in messages:
            for recipient in message.recipients.values():
                if recipient.pending and recipient.next_attempt > when:
                    recipient.next_attempt = when
                    moved += 1
        self._append_event(message_id, AdminAction.RETRY)
        return moved

    async def change(
        self, action: AdminAction, selection: Selection, *, now: float | None = None
    ) -> AdminOutcome:
        self._writable()
        if action not in CHANGES:
            raise ValueError(f"not an admin change: {action}")
        when = time.time() if now is None else now
        chosen = [
            m for m in self._messages.values()
            if selection.matches(parse_queue_id(m.id) or 0, m.sender,
                                 (r.address for r in m.recipients.values() if r.pending),
                                 m.received_at)
        ]  # fmt: skip
        found = [parse_queue_id(m.id) or 0 for m in chosen]
        held = [m for m in chosen if m.held] if action is AdminAction.RETRY else []
        targets = [m for m in chosen if m not in held]
        moved = 0
        for message in targets:
            if action is AdminAction.DELETE:
                del self._messages[message.id]
                continue
            if action in (AdminAction.HOLD, AdminAction.RELEASE):
                message.held = action is AdminAction.HOLD
            if action in (AdminAction.RETRY, AdminAction.RELEASE):
                for recipient in message.recipients.values():
                    if recipient.pending:  # counted also when it was due already
                        recipient.next_attempt = min(recipient.next_attempt, when)
                        moved += 1
        if action is AdminAction.RETRY and selection.everything:
            self._append_event(None, action)
        else:
            for message in targets:
                self._append_event(message.id, action)
        return AdminOutcome(action, tuple(m.id for m in targets), tuple(m.id for m in held),
                            selection.missing(found), moved)  # fmt: skip

    def _writable(self) -> None:
        if self._closed:
            raise RelaymailError("the queue store is closed")

    def _append_event(self, message_id: str | None, action: AdminAction) -> None:
        last = self._events[-1].id if self._events else 0
        self._events.append(AdminEvent(last + 1, message_id, action, self._clock()))

    # -- reads ---------------------------------------------------------------

    def open_body(self, message_id: str) -> MessageBody:
        size = len(self.load_data(message_id))

        def read_at(offset: int, length: int) -> bytes:
            # The same contract as SQLite's: each chunk looks the message up again.
            message = self._messages.get(message_id)
            if message is None:
                raise BodyUnreadable(f"message {message_id} is gone")
            return message.data[offset : offset + length]

        return MessageBody(size, read_at, self.chunk_size)

    def load_data(self, message_id: str) -> bytes:
        message = self._messages.get(message_id)
        if message is None:
            raise KeyError(message_id)
        return message.data

    def load_pending(self) -> list[PendingMessage]:
        pending = (self._pending(m) for m in self._messages.values())
        return [p for p in pending if p.recipients]

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        message = self._messages.get(message_id)
        pending = None if message is None else self._pending(message)
        return pending if pending is not None and pending.recipients else None

    @staticmethod
    def _pending(message: _Message) -> PendingMessage:
        return PendingMessage(
            **message.about(),
            recipients=tuple(
                PendingRecipient(r.address, r.state, r.attempts, r.next_attempt, r.dsn)
                for r in message.recipients.values()
                if r.pending
            ),
            requiretls=message.requiretls,
            ret=message.dsn.ret,
            envid=message.dsn.envid,
        )

    def due_messages(
        self, now: float, limit: int, exclude: frozenset[str] = frozenset()
    ) -> DueBatch:
        due: list[tuple[float, str]] = []
        later: list[float] = []
        for message in self._messages.values():
            times = [r.next_attempt for r in message.recipients.values() if r.pending]
            later += [t for t in times if t > now]
            if times and min(times) <= now and not message.held and message.id not in exclude:
                due.append((min(times), message.id))
        due.sort()
        batch = [self._pending(self._messages[message_id]) for _, message_id in due[:limit]]
        return DueBatch(tuple(batch), len(due) > limit, min(later, default=None))

    def latest_admin_event_id(self) -> int:
        return self._events[-1].id if self._events else 0

    def fetch_admin_events(self, after_id: int) -> list[AdminEvent]:
        return [event for event in self._events if event.id > after_id]

    def queued_pickups(self, names: Sequence[str]) -> dict[str, str]:
        return {name: self._pickups[name] for name in names if name in self._pickups}

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]:
        return [
            MessageSummary(
                **m.about(),
                recipients=m.counts(),
                next_attempt=min(
                    (r.next_attempt for r in m.recipients.values() if r.pending), default=None
                ),
            )
            for m in self._selected(state)[offset : offset + limit]
        ]

    def count_messages(self, state: RecipientState | None = None) -> int:
        return len(self._selected(state))

    def _selected(self, state: RecipientState | None) -> list[_Message]:
        return [
            m
            for m in self._messages.values()
            if state is None or any(r.state is state for r in m.recipients.values())
        ]

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        chosen = (self._messages.get(i) for i in message_ids)
        return {m.id: tuple(map(_detail, m.recipients.values())) for m in chosen if m is not None}

    def get_message(self, message_id: str) -> MessageDetail | None:
        m = self._messages.get(message_id)
        if m is None:
            return None
        return MessageDetail(
            **m.about(),
            recipients=tuple(map(_detail, m.recipients.values())),
            requiretls=m.requiretls,
            ret=m.dsn.ret,
            envid=m.dsn.envid,
        )

    def stats(self, now: float | None = None) -> QueueStats:
        messages = list(self._messages.values())
        counts = [m.counts() for m in messages]
        oldest = min((m.received_at for m in messages), default=None)
        when = time.time() if now is None else now
        return QueueStats(
            messages=len(messages),
            held=sum(m.held for m in messages),
            total_bytes=sum(m.size for m in messages),
            recipients=RecipientCounts(
                queued=sum(c.queued for c in counts),
                deferred=sum(c.deferred for c in counts),
                delivered=sum(c.delivered for c in counts),
                bounced=sum(c.bounced for c in counts),
            ),
            oldest_received_at=oldest,
            oldest_age=None if oldest is None else max(0.0, when - oldest),
        )

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown:
        waiting = [r for m in self._messages.values() for r in m.recipients.values()
                   if not r.state.is_final]  # fmt: skip
        destinations = Counter(r.address.rpartition("@")[2].lower() for r in waiting)
        reasons = Counter(
            r.last_error or r.last_reply or "-"
            for r in waiting
            if r.state is RecipientState.DEFERRED
        )
        return PendingBreakdown(_top(destinations, limit), _top(reasons, limit))


def _top(counts: Counter[str], limit: int) -> tuple[Tally, ...]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(Tally(name, n) for name, n in ranked[:limit])


if TYPE_CHECKING:
    _IMPLEMENTS_STORE: type[Store] = MemoryStore  # mypy proves the protocol is met
