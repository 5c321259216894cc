"""Delivery: a message to its recipients' next hops, the TLS policy applied at each."""

from .engine import DeliveryEngine, deliver
from .results import Attempt, AttemptResult, RecipientResult, Status

__all__ = ["Attempt", "AttemptResult", "DeliveryEngine", "RecipientResult", "Status", "deliver"]
