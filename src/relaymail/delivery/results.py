"""What a delivery reports: per recipient a status, the reason, and every attempt."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..tls.context import CLEAR, TlsFacts


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One step of a delivery that a person may want to see."""

    host: str
    ip: str
    result: str
    tls: bool
    detail: str


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: str
    status: Status
    reason: str
    host: str | None = None
    reply: str | None = None
    tls: TlsFacts = CLEAR
    attempts: tuple[Attempt, ...] = ()
    enhanced_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "host": self.host,
            "reply": self.reply,
            "tls": {
                "used": self.tls.used,
                "version": self.tls.version,
                "cipher": self.tls.cipher,
                "verified": self.tls.verified,
            },
            "reason": self.reason,
            "attempts": [
                {"host": a.host, "ip": a.ip, "result": a.result, "tls": a.tls, "detail": a.detail}
                for a in self.attempts
            ],
        }
