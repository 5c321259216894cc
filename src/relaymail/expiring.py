"""A small in-memory cache whose entries expire and whose size is capped.

The engine's caches are keyed by destination (TLSA answers per MX host, MTA-STS
results and downgrade-memory writes per domain): without a cap they would grow
with every domain the queue ever held. Past `max_entries` the expired entries go
first, then the oldest; a dropped entry only costs a lookup again.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}  # insertion order: the oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The value if it has not expired by `now`; an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, until: float, now: float) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self._max:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (until, value)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)
