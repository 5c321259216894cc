"""Who may start a delivery now: the global limit and each destination's, with no I/O.

A delivery takes one global slot (`[queue] max_deliveries`) and one slot of every
destination it goes to (`[delivery] destination_concurrency`), and only when it can
have them: a delivery never holds a global slot while it waits for a destination,
so a slow destination fills its own slots and no others. A message whose
recipients go to several destinations is granted the ones with room; the others
wait for their own slots.

The table keeps a count only for destinations with deliveries in flight, so its
memory follows the deliveries, not the queue. Traffic shaping (connections per
MX group, messages per minute) is more limits checked in `grant`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .routing import Destination


@dataclass(frozen=True, slots=True)
class Limits:
    total: int  # deliveries at once, all destinations
    per_destination: int


@dataclass(frozen=True, slots=True)
class Grant:
    """Slots held by one delivery: the global one and these destinations'."""

    destinations: frozenset[Destination]


class SlotTable:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits  # a reload may change them; slots already held stay held
        self._in_flight = 0
        self._by_destination: dict[Destination, int] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def full(self) -> bool:
        """No delivery can start, whatever its destination."""
        return self._in_flight >= self.limits.total

    def has_room(self, destination: Destination) -> bool:
        return self._by_destination.get(destination, 0) < self.limits.per_destination

    def in_use(self, destination: Destination) -> int:
        return self._by_destination.get(destination, 0)

    def grant(self, wanted: Iterable[Destination]) -> Grant | None:
        """Slots for those of `wanted` that have room; None when none has, or `full`."""
        if self.full:
            return None
        granted = frozenset(d for d in wanted if self.has_room(d))
        if not granted:
            return None
        self._in_flight += 1
        for destination in granted:
            self._by_destination[destination] = self._by_destination.get(destination, 0) + 1
        return Grant(granted)

    def release(self, grant: Grant) -> None:
        self._in_flight -= 1
        for destination in grant.destinations:
            left = self._by_destination[destination] - 1
            if left:
                self._by_destination[destination] = left
            else:
                del self._by_destination[destination]

    @property
    def destinations_in_use(self) -> int:
        return len(self._by_destination)
