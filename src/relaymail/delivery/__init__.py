"""Delivery: a message to its recipients' next hops, the TLS policy applied at each."""

from .engine import DeliveryEngine, deliver
from .results import Attempt, RecipientResult, Status

__all__ = ["Attempt", "DeliveryEngine", "RecipientResult", "Status", "deliver"]
