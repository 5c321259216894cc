"""The queue's storage border: the `Store` protocol and the values that cross it.

The scheduler, the inbound server and the CLI talk to the queue only through
this protocol, so a second backend (PostgreSQL, for several nodes) can follow
without touching them. Everything that crosses is a frozen dataclass or an
enum; times are POSIX timestamps (float seconds, wall clock) because they are
stored and compared across processes and restarts.

Contract every backend keeps:

- A write coroutine returns only after its change is durable, and a change
  whose coroutine raised was not applied at all (no half-written message).
- A write that fails because the storage cannot take it (disk full, read-only,
  I/O error, lock held too long) raises `relaymail.errors.QueueFull` with the
  reason; the store stays usable and later writes succeed once the condition
  clears.
- Cancelling a write coroutine does not cancel the write: it may still commit.
  For `enqueue` that means the message may be queued although the client was
  never answered, i.e. a possible duplicate, never a loss (RFC 5321 6.1).
- A message whose recipients are all final (delivered or bounced) is gone: its
  row, its recipients and its body are deleted in the transaction that made
  the last one final.
- Unknown message ids are not errors for admin operations (another process
  may have deleted the message a moment ago): they return False / 0 / None.
- Admin changes (hold, release, delete, retry) also append an `AdminEvent`, so
  a daemon learns about changes another process (the CLI) made.
- Where several nodes share the store, `claim` before a delivery is what makes
  it this node's: a backend whose store is one node's (SQLite, memory) says yes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..body import MessageBody
from ..dsn_request import NO_DSN, NO_RECIPIENT_DSN, DsnRequest, RecipientDsn, Ret
from ..message import Envelope
from ..message_data import MessageData

if TYPE_CHECKING:
    from .selection import AdminOutcome, Selection


class RecipientState(enum.StrEnum):
    """Where one recipient of a queued message stands."""

    QUEUED = "queued"  # not attempted yet
    DEFERRED = "deferred"  # attempted, failed temporarily, will be retried
    DELIVERED = "delivered"  # accepted by the next hop (final)
    BOUNCED = "bounced"  # failed permanently or expired (final)

    @property
    def is_final(self) -> bool:
        return self in (RecipientState.DELIVERED, RecipientState.BOUNCED)


class AdminAction(enum.StrEnum):
    """An administrative change recorded in the admin event log."""

    HOLD = "hold"
    RELEASE = "release"
    DELETE = "delete"
    RETRY = "retry"
    # Queued by another process; older sendmails wrote the queue themselves.
    SUBMIT = "submit"


TraceHeader = Callable[[str], bytes]
"""The trace field(s) a front door puts in front of a message, given its queue id.

Every Received: header names the queue id (RFC 5321 4.4 "id"), and a backend
allocates the id inside the write that stores the message; so the store calls
this there, on whatever thread writes, and stores what it returns in front of
the data. It must be pure and quick: it runs inside the transaction.
"""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message the queue has durably accepted.

    `envelope` lists each recipient once: exact duplicates in the SMTP envelope
    are queued (and delivered) once. `trace` is what the TraceHeader gave, now
    stored in front of the data; `size` counts it.
    """

    id: str
    envelope: Envelope
    size: int
    received_at: float
    trace: bytes = b""


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """The outcome of one delivery attempt for one recipient.

    The fields describe the latest attempt and replace what was stored before
    (None clears: a connection failure has no reply). `tls` is the delivery
    module's small JSON text describing the TLS session (stored as given).
    """

    message_id: str
    recipient: str
    state: RecipientState
    attempts: int
    next_attempt: float
    last_attempt: float | None = None
    last_reply: str | None = None
    last_error: str | None = None
    tls: str | None = None
    host: str | None = None


@dataclass(frozen=True, slots=True)
class PendingRecipient:
    """A recipient still to be delivered, as the scheduler needs it at startup."""

    address: str
    state: RecipientState
    attempts: int
    next_attempt: float
    dsn: RecipientDsn = NO_RECIPIENT_DSN  # RFC 3461: NOTIFY and ORCPT of its RCPT


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A queued message with its non-final recipients (in envelope order)."""

    id: str
    sender: str
    received_at: float
    size: int
    held: bool
    warned: bool
    recipients: tuple[PendingRecipient, ...]
    requiretls: bool = False  # RFC 8689: MAIL FROM carried REQUIRETLS
    ret: Ret | None = None  # RFC 3461: RET and ENVID of MAIL FROM (ENVID as xtext)
    envid: str | None = None

    @property
    def dsn(self) -> DsnRequest:
        """The message's RFC 3461 parameters, its pending recipients' included."""
        given = [(r.address, r.dsn) for r in self.recipients if r.dsn is not NO_RECIPIENT_DSN]
        if not given and self.ret is None and self.envid is None:
            return NO_DSN  # the common case, without a mapping per message
        return DsnRequest(self.ret, self.envid).with_recipients(given)


@dataclass(frozen=True, slots=True)
class DueBatch:
    """What `due_messages` found: the scheduler's next messages and when to look again."""

    messages: tuple[PendingMessage, ...]  # earliest due first
    more: bool  # the limit cut the batch: other due messages wait on disk
    # The earliest later due time of any pending recipient. A store shared by nodes may
    # say sooner: when another node's claims may have run out (it died) and are due here.
    next_due: float | None


@dataclass(frozen=True, slots=True)
class RecipientCounts:
    queued: int = 0
    deferred: int = 0
    delivered: int = 0
    bounced: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.deferred + self.delivered + self.bounced


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """One line of a queue listing."""

    id: str
    sender: str
    size: int
    received_at: float
    held: bool
    warned: bool
    recipients: RecipientCounts
    next_attempt: float | None  # earliest among non-final recipients


@dataclass(frozen=True, slots=True)
class RecipientDetail:
    address: str
    state: RecipientState
    attempts: int
    next_attempt: float
    last_attempt: float | None
    last_reply: str | None
    last_error: str | None
    tls: Mapping[str, Any] | None  # the stored TLS facts (TlsFacts.to_json), as an object
    host: str | None
    dsn: RecipientDsn = NO_RECIPIENT_DSN  # RFC 3461: NOTIFY and ORCPT of its RCPT


@dataclass(frozen=True, slots=True)
class MessageDetail:
    id: str
    sender: str
    size: int
    received_at: float
    held: bool
    warned: bool
    recipients: tuple[RecipientDetail, ...]
    requiretls: bool = False  # RFC 8689: MAIL FROM carried REQUIRETLS
    ret: Ret | None = None  # RFC 3461: RET and ENVID of MAIL FROM (ENVID as xtext)
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    messages: int
    held: int
    total_bytes: int
    recipients: RecipientCounts
    oldest_received_at: float | None
    oldest_age: float | None  # seconds, relative to the `now` given to stats()


@dataclass(frozen=True, slots=True)
class Tally:
    """One row of a top-N count: what, and how many."""

    name: str
    count: int


@dataclass(frozen=True, slots=True)
class PendingBreakdown:
    """The waiting recipients grouped: by destination domain, and the deferred ones by reason."""

    destinations: tuple[Tally, ...]
    reasons: tuple[Tally, ...]


@dataclass(frozen=True, slots=True)
class AdminEvent:
    """An admin change; `message_id` is None for a change to the whole queue."""

    id: int
    message_id: str | None
    action: AdminAction
    at: float


class Store(Protocol):
    """What the rest of relaymail may ask of the queue storage.

    Async methods are writes (durable when they return) and reads the daemon
    makes on its hot path; sync methods are reads for startup, the scheduler's
    resynchronisation after admin events, and the CLI.
    """

    async def close(self) -> None:
        """Finish the writes already submitted, then release everything."""
        ...

    async def enqueue(
        self,
        envelope: Envelope,
        data: bytes | MessageData,
        received_at: float,
        *,
        trace: TraceHeader | None = None,
        pickup: str | None = None,
    ) -> QueuedMessage:
        """Queue a message: every recipient QUEUED, attempts 0, due at `received_at`.

        `trace`, given the new queue id, makes the header stored in front of `data`.
        A MessageData is read in chunks inside the write (never whole in memory);
        the caller keeps it open until this returns.
        `pickup` is the name of the maildrop file the message came from, recorded
        in the same transaction (see `queued_pickups`).
        """
        ...

    async def forget_pickups(self, names: Sequence[str]) -> None:
        """Drop the records of maildrop files that are gone from the maildrop."""
        ...

    async def record(self, updates: Sequence[RecipientUpdate]) -> None:
        """Store delivery outcomes; removes messages whose recipients are all final."""
        ...

    async def claim(self, message_id: str) -> bool:
        """Make a delivery of this message this node's, now; False if another node has it.

        Called before each delivery. A backend shared by nodes holds the claim with a
        lease it renews while the delivery runs; `record` stores outcomes only under
        this node's claim, and releases it when no recipient is due any more.
        """
        ...

    async def mark_warned(self, message_id: str) -> bool:
        """Note that the delay warning went out; False if the message is gone."""
        ...

    async def set_hold(self, message_id: str, held: bool) -> bool:
        """Hold or release a message; False if it does not exist."""
        ...

    async def delete(self, message_id: str) -> bool:
        """Remove a message without delivering it; False if it does not exist."""
        ...

    async def retry(self, message_id: str | None = None, *, now: float | None = None) -> int:
        """Make waiting recipients due now (all messages if None); how many were moved."""
        ...

    async def change(
        self, action: AdminAction, selection: Selection, *, now: float | None = None
    ) -> AdminOutcome:
        """Hold, release, delete or retry every message selected, in one transaction.

        Release also makes the waiting recipients due now; retry leaves held
        messages alone (they are listed in the outcome). One
        admin event per message changed, or one for the whole queue when a
        retry selected everything.
        """
        ...

    def open_body(self, message_id: str) -> MessageBody:
        """The message data, read chunk by chunk as it is sent; KeyError if it is gone.

        A chunk that cannot be read (the message deleted since, a disk error)
        raises BodyUnreadable; each chunk is a short read of its own.
        """
        ...

    def load_data(self, message_id: str) -> bytes:
        """The message data; KeyError if the message is gone."""
        ...

    def load_pending(self) -> list[PendingMessage]:
        """Every queued message with its non-final recipients, in queue-id order."""
        ...

    def load_pending_message(self, message_id: str) -> PendingMessage | None:
        """One message as `load_pending` would return it; None if it is gone."""
        ...

    def due_messages(
        self, now: float, limit: int, exclude: frozenset[str] = frozenset()
    ) -> DueBatch:
        """Up to `limit` messages not held, not in `exclude`, with a recipient due by `now`,
        earliest due first (as `load_pending` gives them): an indexed read, whatever the
        queue holds (the scheduler's active window refills from it)."""
        ...

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]:
        """A page of messages in queue-id (arrival) order.

        With `state`, only messages having at least one recipient in that state.
        """
        ...

    def count_messages(self, state: RecipientState | None = None) -> int:
        """How many messages `list_messages` would page through."""
        ...

    def get_message(self, message_id: str) -> MessageDetail | None: ...

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        """Every recipient of each of these messages, in envelope order; gone ones left out."""
        ...

    def stats(self, now: float | None = None) -> QueueStats: ...

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown:
        """The `limit` largest destinations and deferral reasons, largest first."""
        ...

    def latest_admin_event_id(self) -> int:
        """The cursor to start `fetch_admin_events` from (0 when there was none).

        A daemon takes it *before* `load_pending`, so an event committed in
        between is seen twice rather than missed (applying one is idempotent).
        """
        ...

    def fetch_admin_events(self, after_id: int) -> list[AdminEvent]:
        """Admin events with id > after_id, oldest first; cheap when there are none."""
        ...

    async def wait_admin_event(self, timeout: float) -> None:
        """Return when an admin event may have been appended, at the latest after `timeout`.

        A backend that cannot tell simply waits `timeout` (the caller polls).
        """
        ...

    def queued_pickups(self, names: Sequence[str]) -> dict[str, str]:
        """Which of these maildrop file names are queued already, with their queue ids."""
        ...
