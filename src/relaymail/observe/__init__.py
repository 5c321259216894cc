"""What the daemon reports: typed events (events.py), their text and JSON forms
(render.py), and the one emit point that feeds logs and metrics (hub.py)."""

from .events import (
    Accepted,
    Admin,
    Attempt,
    Delays,
    Delivery,
    DeliveryStatus,
    Direction,
    Expanded,
    InboundConnection,
    LogEvent,
    Notice,
    OutboundConnection,
    PickedUp,
    Rejected,
    RejectReason,
    Suspended,
    tls_words,
)
from .hub import emit, subscribe

__all__ = [
    "Accepted",
    "Admin",
    "Attempt",
    "Delays",
    "Delivery",
    "DeliveryStatus",
    "Direction",
    "Expanded",
    "InboundConnection",
    "LogEvent",
    "Notice",
    "OutboundConnection",
    "PickedUp",
    "RejectReason",
    "Rejected",
    "Suspended",
    "emit",
    "subscribe",
    "tls_words",
]
