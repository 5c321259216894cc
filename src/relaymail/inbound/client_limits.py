"""Per-client limits of one listener: connections, their rate, messages, AUTH failures.

Pure and clock-driven (every call takes `now`, monotonic seconds), like Postfix's anvil:
the listener asks before it greets, at MAIL and after each failed AUTH, and acts on the
typed answer. A client is an IPv4 address or an IPv6 /64: one end site gets a /64 (or
more), so a client walking its own /64 must not get 2**64 budgets.

Rates are token buckets (a burst up to the per-minute limit, refilled evenly), so the
state of a client is a few numbers whatever its traffic. Clients with nothing open and
nothing to remember are dropped; beyond `max_clients` the least recently seen idle ones
go first, so memory stays bounded under an address-walking flood.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from ..listener_settings import LimitSettings
from .checks import IPAddress

__all__ = ["Admission", "AuthPenalty", "ClientKey", "ClientLimits", "client_key"]

ClientKey = ipaddress.IPv4Address | ipaddress.IPv6Network

_IPV6_PREFIX: Final = 64
# The delay after a failed AUTH doubles with each failure, up to this (seconds).
MAX_AUTH_DELAY: Final = 30.0


def client_key(ip: IPAddress) -> ClientKey:
    """What the limits count by: the IPv4 address (also when IPv4-mapped), else its /64."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ipaddress.IPv6Network((ip, _IPV6_PREFIX), strict=False)
    return ip


class Admission(enum.Enum):
    ADMITTED = "admitted"
    TOO_MANY_CONNECTIONS = "too many connections"
    CONNECTION_RATE = "connection rate"
    AUTH_BLOCKED = "blocked after failed AUTH"


@dataclass(frozen=True, slots=True)
class AuthPenalty:
    """What one failed AUTH costs the client: a wait before the reply, or the block."""

    failures: int
    """Failures counted for this client, this one included."""
    delay: float
    blocked: bool


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float

    def take(self, per_minute: int, now: float) -> bool:
        self.tokens = min(per_minute, self.tokens + (now - self.at) * per_minute / 60.0)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def full(self, per_minute: int, now: float) -> bool:
        return self.tokens + (now - self.at) * per_minute / 60.0 >= per_minute


@dataclass(slots=True)
class _Client:
    connections: int = 0
    connects: _Bucket | None = None
    messages: _Bucket | None = None
    auth_failures: int = 0
    last_failure: float = float("-inf")
    blocked_until: float = float("-inf")
    penalty: AuthPenalty | None = None


@dataclass(eq=False)
class ClientLimits:
    """The standing of every client of one listener."""

    settings: LimitSettings
    max_clients: int = 100_000
    _clients: OrderedDict[ClientKey, _Client] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._clients)

    def connect(self, ip: IPAddress, now: float) -> Admission:
        """A new connection from `ip`; counted open when admitted (`disconnect` ends it)."""
        client = self._client(ip, now)
        settings = self.settings
        if client.blocked_until > now:
            return Admission.AUTH_BLOCKED
        if client.connects is None:
            client.connects = _Bucket(settings.connection_rate, now)
        # Every attempt spends from the rate, refused ones too: hammering keeps it refused.
        if not client.connects.take(settings.connection_rate, now):
            return Admission.CONNECTION_RATE
        if client.connections >= settings.max_connections:
            return Admission.TOO_MANY_CONNECTIONS
        client.connections += 1
        return Admission.ADMITTED

    def disconnect(self, ip: IPAddress, now: float) -> None:
        client = self._clients.get(client_key(ip))
        if client is not None and client.connections > 0:
            client.connections -= 1
        self._prune(now)

    def message(self, ip: IPAddress, now: float) -> bool:
        """Whether `ip` may start another message (MAIL) now."""
        client = self._client(ip, now)
        if client.messages is None:
            client.messages = _Bucket(self.settings.message_rate, now)
        return client.messages.take(self.settings.message_rate, now)

    def auth_failed(self, ip: IPAddress, now: float) -> AuthPenalty:
        settings = self.settings
        client = self._client(ip, now)
        if now - client.last_failure > settings.auth_block_time:
            client.auth_failures = 0
        client.auth_failures += 1
        client.last_failure = now
        failures = client.auth_failures
        if failures >= settings.auth_failures:
            client.blocked_until = now + settings.auth_block_time
            client.penalty = AuthPenalty(failures, 0.0, blocked=True)
        else:
            delay = min(settings.auth_delay * 2.0 ** (failures - 1), MAX_AUTH_DELAY)
            client.penalty = AuthPenalty(failures, delay, blocked=False)
        return client.penalty

    def penalty(self, ip: IPAddress) -> AuthPenalty | None:
        """What the latest failed AUTH of `ip`'s client cost it (None: none remembered)."""
        client = self._clients.get(client_key(ip))
        return None if client is None else client.penalty

    def auth_blocked(self, ip: IPAddress, now: float) -> bool:
        client = self._clients.get(client_key(ip))
        return client is not None and client.blocked_until > now

    def _client(self, ip: IPAddress, now: float) -> _Client:
        key = client_key(ip)
        client = self._clients.get(key)
        if client is None:
            self._prune(now)
            client = self._clients[key] = _Client()
        else:
            self._clients.move_to_end(key)
        return client

    def _prune(self, now: float) -> None:
        """Drop clients that hold nothing worth keeping; past `max_clients`, idle ones first."""
        over = len(self._clients) - self.max_clients + 1
        settings = self.settings
        for key in list(self._clients):
            client = self._clients[key]
            if client.connections:
                continue
            forgettable = (
                client.blocked_until <= now
                and now - client.last_failure > settings.auth_block_time
                and (client.connects is None or client.connects.full(settings.connection_rate, now))
                and (client.messages is None or client.messages.full(settings.message_rate, now))
            )
            if forgettable or over > 0:
                del self._clients[key]
                over -= 1
            elif over <= 0:
                # Least recently seen first: the rest were seen later and are likelier kept.
                break
