"""A listener's settings: the [[listener]] table of the configuration, checked."""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .config_values import DEFAULT_MAX_MESSAGE_SIZE
from .errors import AddressError, ConfigError
from .message import domain_of

__all__ = ["IPNetwork", "LimitSettings", "ListenerMode", "ListenerSettings", "LongLines"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class LongLines(enum.StrEnum):
    """What a listener does with a message line over its ``max_line_length``."""

    FOLD = "fold"
    REFUSE = "refuse"
    """500 5.5.2 after the data, nothing queued (RFC 5321 4.5.3.1.6)."""


class ListenerMode(enum.StrEnum):
    RELAY = "relay"
    """Port 25: mail for relay_domains from anyone; other domains only for
    clients in relay_networks or authenticated ones. STARTTLS if a certificate
    is configured."""
    SUBMISSION = "submission"
    """Port 587: STARTTLS before anything else, AUTH before MAIL."""
    SMTPS = "smtps"
    """Port 465: submission over implicit TLS (RFC 8314)."""


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Per-client limits of a listener (enforced by inbound/client_limits.py)."""

    max_connections: int = 20
    """Open connections from one client at once."""
    connection_rate: int = 60
    """New connections from one client per minute."""
    message_rate: int = 120
    """MAIL commands from one client per minute."""
    auth_failures: int = 10
    """Failed AUTHs, counted over `auth_block_time`, before the client is blocked."""
    auth_delay: float = 1.0
    """The wait before the reply to the first failed AUTH; it doubles with each failure."""
    auth_block_time: float = 1800.0
    """How long a blocked client gets 421 to connections and AUTH, and how long failures count."""

    def __post_init__(self) -> None:
        for name in ("max_connections", "connection_rate", "message_rate", "auth_failures"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        for name in ("auth_delay", "auth_block_time"):
            if not getattr(self, name) > 0:  # NaN too
                raise ConfigError(name, "must be positive")


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One listening socket and the policy applied to its sessions."""

    host: str
    port: int
    mode: ListenerMode = ListenerMode.RELAY
    hostname: str = field(default_factory=socket.getfqdn)
    """Our name in the banner, the EHLO reply and Received: headers."""
    relay_networks: tuple[IPNetwork, ...] = ()
    """Clients that may relay to any domain ("10.0.0.0/8" strings are converted)."""
    relay_domains: tuple[str, ...] = ()
    """Domains anyone may send to. "example.org" matches that domain only,
    ".example.org" any subdomain of it. Normalised to lower-case A-labels."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_auth: bool | None = None
    """None: required in submission and smtps modes, not in relay mode."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Octets of message data as sent (advertised with SIZE)."""
    max_recipients: int = 1000
    max_line_length: int | None = 1000
    """Longest message line in octets including CRLF (RFC 5321 4.5.3.1.6,
    RFC 5322 2.1.1); None leaves lines as they come."""
    long_lines: LongLines = LongLines.FOLD
    """A longer line is folded before the message is queued, or refused."""
    postmaster: str | None = None
    """Where RCPT TO:<postmaster> goes ([local] postmaster); None: postmaster@hostname."""
    max_connections: int = 100
    max_commands_per_verb: int = 10_000
    """How often one connection may use each command verb before 421."""
    max_auth_failures: int = 3
    max_received_headers: int = 50
    """A message that would carry more Received: headers than this once ours
    is added is refused as a loop."""
    idle_timeout: float = 300.0
    """Seconds without a command, or without message data during DATA."""
    client_limits: LimitSettings = field(default_factory=LimitSettings)
    """Per client address (IPv6: per /64); clients in relay_networks are exempt."""
    sender_login_binding: bool = True
    """An authenticated user may send only as its [users] addresses (553 5.7.1)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", ListenerMode(self.mode))
        object.__setattr__(self, "long_lines", LongLines(self.long_lines))
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"{self.port} is not a TCP port")
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ConfigError("hostname", f"{self.hostname!r} is not a host name")
        for name in (
            "max_message_size",
            "max_recipients",
            "max_connections",
            "max_commands_per_verb",
            "max_auth_failures",
            "max_received_headers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.max_line_length is not None and self.max_line_length < 80:
            raise ConfigError("max_line_length", "must be at least 80 (or unset)")
        if self.idle_timeout <= 0:
            raise ConfigError("idle_timeout", "must be positive")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file", "tls_cert_file and tls_key_file go together")
        try:
            networks = tuple(ipaddress.ip_network(n) for n in self.relay_networks)
        except ValueError as exc:
            raise ConfigError("relay_networks", str(exc)) from None
        object.__setattr__(self, "relay_networks", networks)
        object.__setattr__(
            self, "relay_domains", tuple(_relay_domain_key(d) for d in self.relay_domains)
        )

    @property
    def postmaster_address(self) -> str:
        return self.postmaster or f"postmaster@{self.hostname}"

    @property
    def auth_required(self) -> bool:
        if self.require_auth is not None:
            return self.require_auth
        return self.mode is not ListenerMode.RELAY


_DOMAIN: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


def _relay_domain_key(entry: str) -> str:
    subdomains = entry.startswith(".")
    try:
        domain = domain_of("postmaster@" + entry.removeprefix("."))
    except AddressError as exc:
        raise ConfigError("relay_domains", f"{entry!r}: {exc}") from None
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        raise ConfigError("relay_domains", f"{entry!r} is not a domain")
    return "." + domain if subdomains else domain
