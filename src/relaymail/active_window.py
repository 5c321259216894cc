"""The scheduler's active window (Postfix's active queue): the messages it holds in memory.

At most `limit` messages, each with its pending recipients and no body, ordered by
due time in a heap. The rest of the queue stays on disk; the scheduler refills the
window from it by due time (Store.due_messages) as the window drains, so memory
holds the window, not the queue. A message whose every destination is at its
concurrency limit waits parked under one of them, out of the heap, and is woken
when that destination frees a slot. No I/O here: the scheduler does the reading.
"""

from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass

from .dsn_request import DsnRequest
from .routing import Destination


@dataclass(slots=True)
class WaitingRecipient:
    attempts: int
    due: float


@dataclass(slots=True)
class Entry:
    id: str
    sender: str
    received_at: float
    warned: bool
    recipients: dict[str, WaitingRecipient]
    before_queue: float = 0.0  # delays=a: MAIL FROM to the commit; unknown after a restart
    requiretls: bool = False  # RFC 8689: delivered only over verified TLS with REQUIRETLS
    dsn: DsnRequest | None = None  # RFC 3461: what the sender asked of notifications

    @property
    def due(self) -> float:
        return min(p.due for p in self.recipients.values())


@dataclass(frozen=True, slots=True)
class WindowStats:
    size: int  # messages in memory now
    peak: int  # the most there ever were at once
    limit: int
    in_flight: int  # of `size`, in delivery now
    parked: int  # of `size`, waiting for a destination's slot


class ActiveWindow:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # a reload may lower it: the window then drains below it
        self._entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._in_flight: set[str] = set()
        self._parked: dict[Destination, collections.deque[str]] = {}
        self._parked_ids: set[str] = set()
        self._peak = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._entries

    def get(self, message_id: str) -> Entry | None:
        return self._entries.get(message_id)

    def ids(self) -> frozenset[str]:
        return frozenset(self._entries)

    def idle_ids(self) -> list[str]:
        """The messages not in delivery now."""
        return [m for m in self._entries if m not in self._in_flight]

    @property
    def room(self) -> int:
        return max(0, self.limit - len(self._entries))

    def ready_by(self, now: float) -> bool:
        """Whether something in the heap is due by `now` (it may be stale)."""
        return bool(self._heap) and self._heap[0][0] <= now

    def stats(self) -> WindowStats:
        return WindowStats(
            len(self._entries), self._peak, self.limit, len(self._in_flight),
            len(self._parked_ids),
        )  # fmt: skip

    def put(self, entry: Entry) -> bool:
        """Hold `entry` (replacing an older copy of it); False when the window is full."""
        if entry.id not in self._entries and len(self._entries) >= self.limit:
            return False
        self._entries[entry.id] = entry
        self._peak = max(self._peak, len(self._entries))
        if entry.id not in self._in_flight:
            self.schedule(entry)
        return True

    def remove(self, message_id: str) -> None:
        # Heap items and parked ids of a removed entry are dropped when reached.
        self._entries.pop(message_id, None)
        self._parked_ids.discard(message_id)

    def schedule(self, entry: Entry) -> None:
        heapq.heappush(self._heap, (entry.due, entry.id))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Entry | None:
        """The earliest entry due by `now` that is not in flight or parked, if any."""
        while self._heap and self._heap[0][0] <= now:
            _, message_id = heapq.heappop(self._heap)
            entry = self._entries.get(message_id)
            if entry is None or message_id in self._in_flight or message_id in self._parked_ids:
                continue
            if entry.due > now:
                self.schedule(entry)  # rescheduled since this heap item was made
                continue
            return entry
        return None

    def started(self, message_id: str) -> None:
        self._in_flight.add(message_id)

    def finished(self, message_id: str) -> None:
        self._in_flight.discard(message_id)

    def park(self, entry: Entry, destination: Destination) -> None:
        """`entry` waits until `destination` frees a slot (unpark)."""
        self._parked.setdefault(destination, collections.deque()).append(entry.id)
        self._parked_ids.add(entry.id)

    def unpark(self, destination: Destination) -> None:
        """One slot of `destination` is free: the oldest entry parked there may try again."""
        waiting = self._parked.get(destination)
        while waiting:
            message_id = waiting.popleft()
            if message_id in self._parked_ids:
                self._parked_ids.discard(message_id)
                entry = self._entries.get(message_id)
                if entry is not None:
                    self.schedule(entry)
                    break
        if not waiting:
            self._parked.pop(destination, None)
