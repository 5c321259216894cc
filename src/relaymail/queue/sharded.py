"""The shards of one queue (shards.py) read and steered as one queue: the CLI, the status page.

Each shard answers for its own messages and the answers are merged: counts
add up, listings merge in queue-id order (ids sort like arrival times and
are unique across shards), one message is in one shard. An admin change is
written into every shard, each in its own transaction with its own admin
events, so the worker that owns a message sees the change on its shard's
events table. Shards that appear later (a worker's first start) are opened
when next asked.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..shards import present_shards, shard_directory
from .selection import AdminOutcome, Selection
from .sqlite import SqliteStore
from .store import (
    AdminAction,
    MessageDetail,
    MessageSummary,
    PendingBreakdown,
    QueueStats,
    RecipientCounts,
    RecipientDetail,
    RecipientState,
    Tally,
)

__all__ = ["QueueView", "ShardedQueue"]

_RECIPIENT_STATES = ("queued", "deferred", "delivered", "bounced")  # RecipientCounts' fields


class QueueView(Protocol):
    """The reads that see the whole queue: what the status page and the gauges ask."""

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]: ...

    def count_messages(self, state: RecipientState | None = None) -> int: ...

    def get_message(self, message_id: str) -> MessageDetail | None: ...

    def recipients_of(
        self, message_ids: Sequence[str]
    ) -> dict[str, tuple[RecipientDetail, ...]]: ...

    def stats(self, now: float | None = None) -> QueueStats: ...

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown: ...


@dataclass
class ShardedQueue:
    """Every shard of the queue in `directory`; `given` are stores opened by their owner."""

    directory: Path
    given: dict[int, SqliteStore] = field(default_factory=dict)
    _opened: dict[int, SqliteStore] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # reads run on threads

    @property
    def stores(self) -> list[SqliteStore]:
        with self._lock:
            for index in present_shards(self.directory):
                if index not in self.given and index not in self._opened:
                    self._opened[index] = SqliteStore.open(shard_directory(self.directory, index))
            every = {**self._opened, **self.given}
        return [every[i] for i in sorted(every)]

    async def close(self) -> None:
        opened, self._opened = self._opened, {}
        for store in opened.values():
            await store.close()

    # -- reads ---------------------------------------------------------------

    def list_messages(
        self, limit: int = 50, offset: int = 0, state: RecipientState | None = None
    ) -> list[MessageSummary]:
        pages = [s.list_messages(limit + offset, 0, state) for s in self.stores]
        merged = heapq.merge(*pages, key=lambda m: m.id)  # same-length ids sort as numbers
        return list(itertools.islice(merged, offset, offset + limit))

    def count_messages(self, state: RecipientState | None = None) -> int:
        return sum(s.count_messages(state) for s in self.stores)

    def get_message(self, message_id: str) -> MessageDetail | None:
        return next(
            (found for s in self.stores if (found := s.get_message(message_id)) is not None), None
        )

    def load_data(self, message_id: str) -> bytes:
        for store in self.stores:
            try:
                return store.load_data(message_id)
            except KeyError:
                continue
        raise KeyError(message_id)

    def recipients_of(self, message_ids: Sequence[str]) -> dict[str, tuple[RecipientDetail, ...]]:
        found: dict[str, tuple[RecipientDetail, ...]] = {}
        for store in self.stores:
            found.update(store.recipients_of(message_ids))
        return found

    def stats(self, now: float | None = None) -> QueueStats:
        parts = [s.stats(now) for s in self.stores]
        oldest = [p for p in parts if p.oldest_received_at is not None]
        first = min(oldest, key=lambda p: p.oldest_received_at or 0.0) if oldest else None
        return QueueStats(
            messages=sum(p.messages for p in parts),
            held=sum(p.held for p in parts),
            total_bytes=sum(p.total_bytes for p in parts),
            recipients=RecipientCounts(
                *(sum(getattr(p.recipients, n) for p in parts) for n in _RECIPIENT_STATES)
            ),
            oldest_received_at=None if first is None else first.oldest_received_at,
            oldest_age=None if first is None else first.oldest_age,
        )

    def pending_breakdown(self, limit: int = 10) -> PendingBreakdown:
        # Each shard's top `limit` is exact for that shard; a name below the cut in
        # every shard can be missed, as a top-N of parts may (shown as "largest").
        parts = [s.pending_breakdown(limit) for s in self.stores]

        def top(tallies: list[tuple[Tally, ...]]) -> tuple[Tally, ...]:
            counts: Counter[str] = Counter()
            for part in tallies:
                for tally in part:
                    counts[tally.name] += tally.count
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            return tuple(Tally(name, count) for name, count in ranked[:limit])

        return PendingBreakdown(
            top([p.destinations for p in parts]), top([p.reasons for p in parts])
        )

    # -- admin changes -------------------------------------------------------

    async def change(self, action: AdminAction, selection: Selection) -> AdminOutcome:
        outcomes = [await s.change(action, selection) for s in self.stores]
        missing = set.intersection(*(set(o.missing) for o in outcomes)) if outcomes else set()
        named = selection.missing(()) if selection.ids is not None else ()
        return AdminOutcome(
            action,
            changed=tuple(sorted(itertools.chain.from_iterable(o.changed for o in outcomes))),
            held=tuple(sorted(itertools.chain.from_iterable(o.held for o in outcomes))),
            missing=tuple(i for i in named if i in missing) if outcomes else named,
            recipients=sum(o.recipients for o in outcomes),
        )
