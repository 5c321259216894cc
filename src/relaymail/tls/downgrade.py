"""Downgrade memory's judgement, pure: the security level a session reached, and whether it
is below what the domain's MX hosts have shown before.

Levels are ordered as chasquid's `domaininfo` orders them: clear < TLS (any certificate)
< verified TLS (a certificate that PKIX verification, DANE or an enforced MTA-STS policy
accepted). A domain is remembered at the highest level seen; a session that would reach
less is the signature of an attacker on the path: STARTTLS deleted from the EHLO reply,
a forged 454 to STARTTLS, a broken handshake that makes `may` reconnect in clear, a
certificate swapped for one of the attacker's. Each of those is deferred, whatever the
table would have done, and the reason says what was remembered and what was seen.

What the memory stores is tls/memory.py; where the judgement is applied, tls/policy.py.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

__all__ = ["Downgrade", "DowngradeKind", "Remembered", "TlsLevel", "below_memory"]


class TlsLevel(enum.IntEnum):
    """How secure one session was; the stored integer orders them."""

    CLEAR = 0
    TLS = 1
    VERIFIED = 2

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def now_seen(self) -> str:
        """What a session at this level is, in the words of a downgrade's reason."""
        return _NOW[self]


_LABELS = {TlsLevel.CLEAR: "clear", TlsLevel.TLS: "TLS", TlsLevel.VERIFIED: "verified"}
_NOW = {
    TlsLevel.CLEAR: "in clear",
    TlsLevel.TLS: "an unverified certificate",
    TlsLevel.VERIFIED: "a verified certificate",
}


@dataclass(frozen=True, slots=True)
class Remembered:
    """The highest level a domain's MX hosts have shown, since when, and when last."""

    domain: str
    level: TlsLevel
    since: float  # when this level was first seen (or the memory last went up)
    last_seen: float  # when it was last seen: the memory lasts remember_for from here

    def expires(self, remember_for: float) -> float:
        return self.last_seen + remember_for

    def __str__(self) -> str:
        return f"{self.level.label} since {_day(self.since)}"


class DowngradeKind(enum.Enum):
    STRIPPING = "STARTTLS stripping"  # the session would go in clear
    CERTIFICATE = "downgrade"  # TLS, but a certificate that does not verify any more


@dataclass(frozen=True, slots=True)
class Downgrade:
    """A session that would reach less than the domain's remembered level."""

    remembered: Remembered
    reached: TlsLevel

    @property
    def kind(self) -> DowngradeKind:
        if self.reached is TlsLevel.CLEAR:
            return DowngradeKind.STRIPPING
        return DowngradeKind.CERTIFICATE

    def __str__(self) -> str:
        return f"{self.remembered}, now {self.reached.now_seen}: possible {self.kind.value}"


def below_memory(remembered: Remembered | None, reached: TlsLevel | None) -> Downgrade | None:
    """The downgrade a session that would reach `reached` is, or None.

    `reached` None: the session goes nowhere (the host already fails), nothing to catch.
    """
    if remembered is None or reached is None or reached >= remembered.level:
        return None
    return Downgrade(remembered, reached)


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))
