"""What the scheduler remembers of destinations between deliveries: down, or suspended.

Down: no host of a domain answered at all; its other mail waits until the
failed message's next retry (Postfix's "delivery temporarily suspended").
Suspended: a host answered with throttling (throttle.py); the destination, or
its whole MX group, waits for a back-off that grows with each strike
(suspension.py). Either way the waiting mail is deferred without an attempt.
No I/O: the scheduler asks and tells. With a `SharedDestinations`, what is
learnt here is published to the other nodes, and their holds count here too
(from its in-memory snapshot: still no I/O on the way).
"""

from __future__ import annotations

from dataclasses import dataclass

from .delivery import RecipientResult, Status
from .destination_share import HoldKind, SharedDestinations
from .message import domain_of
from .shaping import Shape
from .slot_table import ShapeKey
from .suspension import Suspension, Suspensions
from .throttle import throttle_sign

# Expired entries are swept this often (seconds).
SWEEP_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class HeldBack:
    until: float
    reason: str  # why, in the words of the deferral: "destination down (...)"


class DestinationMemory:
    def __init__(self, shared: SharedDestinations | None = None) -> None:
        self._down_until: dict[str, tuple[float, str]] = {}
        self.suspensions = Suspensions()
        self._swept = 0.0
        self._shared = shared

    def held_back(self, domain: str, key: ShapeKey, now: float) -> HeldBack | None:
        """Whether mail to `domain` (counted as `key`) waits untried now, and until when."""
        suspension = self.suspensions.active(key, now)
        if suspension is not None:
            why = f"{suspension.label} suspended: throttled ({suspension.reason})"
            return HeldBack(suspension.until, why)
        down = self._down_until.get(domain)
        if down is not None and down[0] > now:
            return HeldBack(down[0], f"destination down ({down[1]})")
        return self._held_by_others(domain, key, now)

    def _held_by_others(self, domain: str, key: ShapeKey, now: float) -> HeldBack | None:
        if self._shared is None:
            return None
        other = self._shared.held(key.label, HoldKind.SUSPENDED, now)
        if other is not None:
            why = f"{key.label} suspended by {other.writer}: throttled ({other.reason})"
            return HeldBack(other.until, why)
        other = self._shared.held(domain, HoldKind.DOWN, now)
        if other is not None:
            return HeldBack(other.until, f"destination down for {other.writer} ({other.reason})")
        return None

    def suspended(self, key: ShapeKey, now: float) -> bool:
        """Whether `key` is suspended now, here or by another node."""
        if self.suspensions.active(key, now) is not None:
            return True
        return self._shared is not None and (
            self._shared.held(key.label, HoldKind.SUSPENDED, now) is not None
        )

    def learn(
        self, result: RecipientResult, key: ShapeKey, shape: Shape, due: float, now: float
    ) -> Suspension | None:
        """What one result says of its destination; a suspension it starts, once."""
        domain = domain_of(result.recipient)
        if result.status is Status.DEFERRED and result.reply is None:
            # No host answered at all (connection-level): remember it for the
            # other messages to this destination until this one's next retry.
            self._down_until[domain] = (due, result.reason)
            if self._shared is not None:
                self._shared.publish(domain, HoldKind.DOWN, now, due, result.reason)
            return None
        if result.reply is None:
            return None
        if self._down_until.pop(domain, None) is not None and self._shared is not None:
            self._shared.answered(domain)
        sign = throttle_sign(result.reply)
        if sign is None:
            if result.status is Status.DELIVERED:
                self.suspensions.delivered(key, now)
            return None
        suspension = self.suspensions.throttled(key, shape, result.reply, now, sign.name)
        if suspension is not None and self._shared is not None:
            self._shared.publish(
                suspension.label, HoldKind.SUSPENDED, now, suspension.until, suspension.reason
            )
        return suspension

    def sweep(self, now: float) -> None:
        """Forget what is over, so the memory stays small."""
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        self._down_until = {d: v for d, v in self._down_until.items() if v[0] > now}
        # A strike counts for backoff_max after its suspension ends; a day covers any.
        self.suspensions.sweep(now, keep_for=86400.0)
