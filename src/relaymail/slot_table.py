"""Who may start a delivery now: the global limit, each destination's and its MX group's,
with no I/O.

A delivery takes one global slot (`[queue] max_deliveries`) and one slot of every
destination it goes to, and only when it can have them: a delivery never holds a
global slot while it waits for a destination, so a slow destination fills its own
slots and no others. A message whose recipients go to several destinations is
granted the ones with room; the others wait for their own slots.

Traffic shaping (shaping.py) is more limits checked in `grant`: a destination's
slots are its `max_connections` (one delivery is one session at a time), its MX
group's are shared by every destination in the group, and each grant is one
message sent in the minute `max_messages_per_minute` counts over (a sliding
window: no 60 seconds ever see more). A group's connections are counted from its
destinations' at each check, by the group each is known to be in then. A
destination whose group is not known yet (its MX hosts not looked up since the
start) gets one slot until its first delivery has routed it: from then on that
delivery counts in its group, so only new domains that start at the same moment
can each open one connection past their group's limit.

The table keeps counts only for destinations with deliveries in flight, and the
times of the last minute's sends of those with a rate limit, so its memory
follows the traffic, not the queue.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from .routing import Destination
from .shaping import MxGroup, Shape, ShapingSettings

ShapeKey = Destination | MxGroup
RATE_WINDOW = 60.0  # max_messages_per_minute counts over this many seconds


@dataclass(frozen=True, slots=True)
class Limits:
    total: int  # deliveries at once, all destinations
    per_destination: int  # delivery.destination_concurrency: max_connections by default
    shaping: ShapingSettings = field(default_factory=ShapingSettings)


@dataclass(frozen=True, slots=True)
class Grant:
    """Slots held by one delivery: the global one and these destinations' and groups'."""

    destinations: frozenset[Destination]
    # Suspended destinations, granted without a slot: their mail is deferred, not sent.
    free: frozenset[Destination] = frozenset()


class GroupUnknown:
    """The group lookup's answer for a destination not routed by MX since the start."""


UNKNOWN = GroupUnknown()
GroupLookup = Callable[[Destination], MxGroup | GroupUnknown | None]


def destination_shape(
    shaping: ShapingSettings, destination: Destination, group: MxGroup | GroupUnknown | None
) -> Shape:
    """A destination's own limits: a [routes] destination's entry is its route key's
    (`[routes] "*"`, a smarthost for everything, is shaped by `[shaping."*"]`)."""
    known = group if isinstance(group, MxGroup) else None
    return shaping.shape(destination.name, known)


class SlotTable:
    def __init__(self, limits: Limits, group_of: GroupLookup = lambda _d: None) -> None:
        self.limits = limits  # a reload may change them; slots already held stay held
        self.group_of = group_of  # a reload brings a new engine and its lookup
        self._in_flight = 0
        self._connections: dict[Destination, int] = {}
        self._sent: dict[ShapeKey, collections.deque[float]] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def full(self) -> bool:
        """No delivery can start, whatever its destination."""
        return self._in_flight >= self.limits.total

    def in_use(self, key: ShapeKey) -> int:
        if isinstance(key, Destination):
            return self._connections.get(key, 0)
        # A group's: its destinations' in flight now, counted as their group is known now,
        # so a first delivery that learnt its group counts in it from then on.
        return sum(n for d, n in self._connections.items() if self.group_of(d) == key)

    def sent_in_window(self, key: ShapeKey, now: float) -> int:
        return len(self._window(key, now))

    def shape(self, destination: Destination) -> Shape:
        """The limits `destination` is held to itself (its group's keys included)."""
        return destination_shape(self.limits.shaping, destination, self.group_of(destination))

    def key_of(self, destination: Destination) -> ShapeKey:
        """What a throttling reply of `destination` suspends: its MX group if it has one."""
        group = self.group_of(destination)
        return group if isinstance(group, MxGroup) else destination

    def grant(
        self, wanted: Iterable[Destination], now: float = 0.0, free: Collection[Destination] = ()
    ) -> Grant | None:
        """Slots for those of `wanted` that have room; None when none has, or `full`.

        `free` destinations (suspended) are granted with the others and count nothing.
        """
        if self.full:
            return None
        granted: list[Destination] = []
        for destination in wanted:
            if destination in free:
                continue
            counted = self._room(destination, now)
            if counted is None:
                continue
            granted.append(destination)
            self._connections[destination] = self._connections.get(destination, 0) + 1
            for key in counted:
                self._sent.setdefault(key, collections.deque()).append(now)
        given_free = frozenset(d for d in wanted if d in free)
        if not granted and not given_free:
            return None
        self._in_flight += 1
        return Grant(frozenset(granted), given_free)

    def wait_until(self, wanted: Iterable[Destination], now: float) -> float | None:
        """When the first of `wanted` that has a free slot but no message to spare in
        its minute may send again; None: all wait for a slot (a delivery that ends)."""
        times = []
        for destination in wanted:
            for key in self._room(destination, now, rate=False) or ():
                if sent := self._window(key, now):
                    times.append(sent[0] + RATE_WINDOW)
        return min(times) if times else None

    def release(self, grant: Grant) -> None:
        self._in_flight -= 1
        for key in grant.destinations:
            left = self._connections[key] - 1
            if left:
                self._connections[key] = left
            else:
                del self._connections[key]

    def sweep(self, now: float) -> None:
        """Forget the minute's sends of keys that sent nothing in it."""
        for key in list(self._sent):
            self._window(key, now)

    @property
    def destinations_in_use(self) -> int:
        return len(self._connections)

    def _room(
        self, destination: Destination, now: float, *, rate: bool = True
    ) -> list[ShapeKey] | None:
        """None when `destination` cannot start a delivery now; else the keys (it, its
        group) whose minute the delivery counts in, those with a rate limit."""
        shaping = self.limits.shaping
        group = self.group_of(destination)
        shape = self.shape(destination)
        most = shape.max_connections or self.limits.per_destination
        if isinstance(group, GroupUnknown):
            group, most = None, min(most, 1) if shaping.groups else most
        limits: list[tuple[ShapeKey, int, int | None]] = [
            (destination, most, shape.max_messages_per_minute)
        ]
        if group is not None:
            shared = shaping.group_shape(group)
            most = shared.max_connections or self.limits.per_destination
            limits.append((group, most, shared.max_messages_per_minute))
        for key, connections, per_minute in limits:
            if self.in_use(key) >= connections:
                return None
            if rate and per_minute is not None and len(self._window(key, now)) >= per_minute:
                return None
        return [key for key, _, per_minute in limits if per_minute is not None]

    def _window(self, key: ShapeKey, now: float) -> collections.deque[float]:
        """The times of `key`'s sends in the last minute (the older ones dropped)."""
        sent = self._sent.get(key)
        if sent is None:
            return collections.deque()
        while sent and sent[0] <= now - RATE_WINDOW:
            sent.popleft()
        if not sent:
            del self._sent[key]
        return sent
