"""Destinations that throttle us, suspended for a growing time (KumoMTA's suspensions).

A throttling reply (throttle.py) suspends its destination, or its whole MX
group when the destination has one, for `backoff_min`; one more while it is
suspended or within `backoff_max` after the last one doubles the time, up to
`backoff_max`. A reply that delivers forgets the destination's history. While
suspended, the scheduler defers the destination's mail without an attempt,
until the suspension ends. No I/O: the scheduler feeds it replies and times.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shaping import Shape
from .slot_table import ShapeKey


@dataclass(frozen=True, slots=True)
class Suspension:
    key: ShapeKey
    since: float
    until: float
    reason: str  # the reply that started it
    sign: str  # the throttle pattern it matched
    strikes: int  # throttling replies in a row: 1 for the first suspension

    @property
    def label(self) -> str:
        return self.key.label


class Suspensions:
    def __init__(self) -> None:
        self._by_key: dict[ShapeKey, Suspension] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def active(self, key: ShapeKey, now: float) -> Suspension | None:
        suspension = self._by_key.get(key)
        return suspension if suspension is not None and suspension.until > now else None

    def all_active(self, now: float) -> list[Suspension]:
        """The suspensions in force, the one ending first first."""
        return sorted((s for s in self._by_key.values() if s.until > now), key=lambda s: s.until)

    def throttled(
        self, key: ShapeKey, shape: Shape, reason: str, now: float, sign: str
    ) -> Suspension | None:
        """A throttling reply from `key`: the suspension it starts, or None if one runs.

        Replies to deliveries that were under way when the suspension began are the
        same episode: they neither lengthen it nor count as a strike.
        """
        last = self._by_key.get(key)
        if last is not None and last.until > now:
            return None
        recent = last is not None and now - last.until < shape.backoff_max
        strikes = last.strikes + 1 if last is not None and recent else 1
        wait = min(shape.backoff_max, shape.backoff_min * 2 ** min(strikes - 1, 40))
        suspension = Suspension(key, now, now + wait, reason, sign, strikes)
        self._by_key[key] = suspension
        return suspension

    def delivered(self, key: ShapeKey, now: float) -> None:
        """The destination took mail after its suspension: the next one starts from
        backoff_min again. (Mail accepted while it runs was sent before it began.)"""
        last = self._by_key.get(key)
        if last is not None and last.until <= now:
            del self._by_key[key]

    def sweep(self, now: float, keep_for: float) -> None:
        """Forget suspensions over for longer than `keep_for`, so the memory stays small."""
        self._by_key = {k: s for k, s in self._by_key.items() if now - s.until < keep_for}
