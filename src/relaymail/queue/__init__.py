"""The durable mail queue: the `Store` protocol and its SQLite backend."""

from .ids import format_queue_id, parse_queue_id
from .sqlite import SqliteStore
from .store import (
    AdminAction,
    AdminEvent,
    DueBatch,
    MessageDetail,
    MessageSummary,
    PendingMessage,
    PendingRecipient,
    QueuedMessage,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    RecipientUpdate,
    Store,
    TraceHeader,
)

__all__ = [
    "AdminAction",
    "AdminEvent",
    "DueBatch",
    "MessageDetail",
    "MessageSummary",
    "PendingMessage",
    "PendingRecipient",
    "QueueStats",
    "QueuedMessage",
    "RecipientCounts",
    "RecipientDetail",
    "RecipientState",
    "RecipientUpdate",
    "SqliteStore",
    "Store",
    "TraceHeader",
    "format_queue_id",
    "parse_queue_id",
]
