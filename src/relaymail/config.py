"""Configuration: TOML in, frozen dataclasses out, every mistake named by its key.

Validation is strict on purpose: an unknown key is far more often a typo than
an intention, and a typo in a TLS policy silently weakens it. `load_config`
raises ConfigError(key, reason); the CLI turns that into exit status 78.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .admin.settings import AdminSettings, read_admin
from .config_fields import (
    Reader,
    boolean,
    choice,
    count,
    domain_key,
    host,
    list_of,
    only,
    port,
    read_secret,
    read_table,
    readable_file,
    seconds,
    secret_file,
    whole,
)
from .config_file import find_config_file, read_toml
from .config_queue import QueueSettings, parse_queue
from .config_values import host_name, table, text
from .errors import ConfigError
from .resolver import is_ip
from .shaping import ShapingSettings, parse_shaping
from .shards import MAX_SHARDS, default_processes
from .tls.policy import CONFIG_LEVELS, Level, PolicyTable

if TYPE_CHECKING:
    from .accounts import UserAccount
    from .dkim.settings import DkimDomain
    from .listener_settings import ListenerSettings


class Scheme(enum.Enum):
    """How a [routes] next hop is spoken to."""

    SMTP = "smtp"  # plain SMTP, STARTTLS as the TLS policy says
    SMTPS = "smtps"  # TLS from the first byte (RFC 8314 3.3, port 465)


@dataclass(frozen=True, slots=True)
class HostPort:
    """A next hop from [routes] or a name server from [dns]: host name or IP literal, port."""

    host: str
    port: int
    scheme: Scheme = Scheme.SMTP

    @property
    def is_ip(self) -> bool:
        return is_ip(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    helo_name: str = field(default_factory=socket.getfqdn)
    connect_timeout: float = 30.0
    # RFC 5321 4.5.3.2: 5 minutes for replies to commands, 10 for the reply
    # after the message data ("DATA termination").
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    # Connection reuse (Postfix's connection cache): an idle session stays
    # open this long for the next message to the same destination.
    connection_idle_time: float = 5.0
    destination_concurrency: int = 20
    # The port for MX hosts and address literals (Exim's smtp transport `port`);
    # [routes] entries carry their own.
    port: int = 25
    # Addresses (not host names) one attempt tries from the MX hosts, in MX order: Postfix's
    # smtp_mx_address_limit; chasquid also stops at five. [routes] are not cut.
    max_mx_addresses: int = 5


@dataclass(frozen=True, slots=True)
class TlsSettings:
    tempfail_fallback: bool = True
    ca_file: Path | None = None
    policy: PolicyTable = field(default_factory=PolicyTable)
    # Downgrade memory: every domain (True), these domains, or none.
    remember: bool | tuple[str, ...] = False
    remember_for: float = 30 * 86400.0
    # MTA-STS (RFC 8461) for MX delivery; its policies are fetched over HTTPS
    # verified against mta_sts_ca_file (default: the system's Web PKI store).
    mta_sts: bool = True
    mta_sts_ca_file: Path | None = None
    mta_sts_port: int = 443
    # TLS-RPT (RFC 8460): count every session's TLS outcome, send daily reports.
    reporting: bool = True
    report_organization: str | None = None  # default: delivery.helo_name
    report_contact: str | None = None  # default: postmaster@helo_name
    # DANE (RFC 7672) for MX hosts; needs a DNSSEC-validating resolver ([dns]).
    dane: bool = False

    def remembers(self, domain: str) -> bool:
        return self.remember is True or (
            isinstance(self.remember, tuple) and domain in self.remember
        )


@dataclass(frozen=True, slots=True)
class DnsSettings:
    nameservers: tuple[HostPort, ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class LocalSettings:
    # Where RCPT TO:<postmaster> (no domain, RFC 5321 4.5.1) goes; None:
    # postmaster@ the listener's host name.
    postmaster: str | None = None
    # Bare names (root) become name@domain (Postfix's myorigin); from a file,
    # the default is delivery.helo_name, itself the host's FQDN by default.
    domain: str = field(default_factory=socket.getfqdn)
    # An aliases(5) file for bare names and name@domain; None: no aliases.
    aliases: Path | None = None


@dataclass(frozen=True, slots=True)
class RelayAuth:
    """Credentials for one [routes] host (a smarthost), from [relay_auth."host"]."""

    username: str
    password_file: Path
    # Read at start and on reload; never logged, so kept out of repr().
    password: str = field(repr=False)
    # The least TLS a credentialed session gets: AUTH never goes in clear (RFC 4954 4).
    tls: Level = Level.VERIFY


class VerifyMode(enum.StrEnum):
    """How RCPT for a relay_domains address from an outside client is checked."""

    PROBE = "probe"  # ask the next hop (MAIL FROM:<>, RCPT, RSET), cache the answer
    LIST = "list"  # only the addresses in recipients_file exist
    OFF = "off"  # every address of a relay domain is taken (and may bounce later)


@dataclass(frozen=True, slots=True)
class RecipientVerification:
    """[recipient_verification]: unknown relay recipients get 550 at RCPT, not a bounce."""

    mode: VerifyMode = VerifyMode.PROBE
    recipients_file: Path | None = None
    # Postfix's address_verify_positive/negative_expire_time are 31d and 3d; a
    # recipient that starts to exist should not wait days, one that stops, hours.
    positive_ttl: float = 7 * 86400.0
    negative_ttl: float = 3 * 3600.0
    wait: float = 5.0  # RCPT waits this long for a probe, then answers 450
    probe_timeout: float = 30.0  # a probe's deadline; its answer is cached for the retry
    # Probes at once; more recipients get 450 without one. Below delivery's
    # destination_concurrency (20), so probes never hold every slot of a relay domain.
    max_probes: int = 10
    cache_size: int = 100_000  # verdicts kept, in memory and in recipients.db
    sender: str = ""  # the probes' MAIL FROM (RFC 5321 null sender by default)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # The account `serve` becomes once its listeners are bound, when started as
    # root (relaymail.service); None: it stays who it was started as.
    user: str | None = None
    # Worker processes, each with its own queue shard (shards.py); 1 is one process.
    processes: int = field(default_factory=default_processes)


DEFAULT_LISTENERS: tuple[Mapping[str, Any], ...] = ({"address": "127.0.0.1:2525"},)


@dataclass(frozen=True, slots=True)
class Config:
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    routes: Mapping[str, tuple[HostPort, ...]] = field(default_factory=dict)
    relay_auth: Mapping[str, RelayAuth] = field(default_factory=dict)  # by route host name
    dns: DnsSettings = field(default_factory=DnsSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    recipient_verification: RecipientVerification = field(default_factory=RecipientVerification)
    admin: AdminSettings | None = None  # the metrics and status page listener; None: off
    dkim: Mapping[str, DkimDomain] = field(default_factory=dict)  # by From: domain
    shaping: ShapingSettings = field(default_factory=ShapingSettings)
    # Raw [[listener]] tables, checked by check_server_config; built by listeners() on
    # demand so that short commands (sendmail) need not import the SMTP server.
    listener_tables: tuple[Mapping[str, Any], ...] = ()
    # Raw [users] entries (a hash, or a table with password_hash and addresses).
    user_table: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def listeners(self) -> list[ListenerSettings]:
        """The [[listener]] tables; by default one relay listener on 127.0.0.1:2525."""
        built = self.each_listener()
        for problem in built:
            if isinstance(problem, ConfigError):
                raise problem
        return [listener for listener in built if not isinstance(listener, ConfigError)]

    def each_listener(self) -> list[ListenerSettings | ConfigError]:
        """Each listener's settings, or what is wrong with its table (`relaymail check`)."""
        built: list[ListenerSettings | ConfigError] = []
        from .config_listener import listener_settings

        for i, raw in enumerate(self.listener_tables or DEFAULT_LISTENERS):
            try:
                built.append(
                    listener_settings(raw, i, self.delivery.helo_name, self.local.postmaster)
                )
            except ConfigError as exc:
                built.append(exc)
        return built

    def users(self) -> dict[str, UserAccount]:
        from .accounts import parse_users

        try:
            return parse_users(self.user_table, self.local.domain)
        except ValueError as exc:
            raise ConfigError("users", str(exc)) from None


def find_config(explicit: Path | None) -> Path | None:
    """The file to use (config_file.find_config_file); None means the embedded defaults."""
    found = find_config_file(None if explicit is None else str(explicit))
    return None if found is None else Path(found)


def load_config(path: Path | None) -> Config:
    """Read and validate `path`; None gives the embedded defaults."""
    if path is None:
        return parse_config({})  # the defaults that derive from others (local.domain) included
    return parse_config(read_toml(str(path)), source=path)


def parse_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    sections = {"delivery", "tls", "routes", "relay_auth", "dns", "queue", "listener", "users"}
    more = {"local", "server", "recipient_verification", "admin", "dkim", "shaping"}
    only(raw, "", sections | more)
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list) or not all(isinstance(t, dict) for t in listeners):
        raise ConfigError("listener", "must be an array of tables ([[listener]])")
    users = table(raw, "users")
    for user, value in users.items():
        text(user, "users")
        if isinstance(value, dict):
            read_table(value, f'users."{user}"', _USER)
            if "password_hash" not in value:
                raise ConfigError(f'users."{user}".password_hash', "missing")
        else:
            text(value, f'users."{user}"')
    routes = _routes(table(raw, "routes"))
    delivery = DeliverySettings(**read_table(table(raw, "delivery"), "delivery", _DELIVERY))
    return Config(
        delivery=delivery,
        tls=_tls(table(raw, "tls")),
        routes=routes,
        relay_auth=_relay_auth(table(raw, "relay_auth"), routes),
        dns=_dns(table(raw, "dns")),
        queue=parse_queue(table(raw, "queue")),
        local=LocalSettings(
            **{"domain": delivery.helo_name, **read_table(table(raw, "local"), "local", _LOCAL)}
        ),
        server=ServerSettings(**read_table(table(raw, "server"), "server", _SERVER)),
        recipient_verification=_recipient_verification(table(raw, "recipient_verification")),
        admin=read_admin(table(raw, "admin")),
        dkim=_dkim(table(raw, "dkim")),
        shaping=parse_shaping(table(raw, "shaping")),
        listener_tables=tuple(listeners),
        user_table=dict(users),
        source=source,
    )


_SERVER: Mapping[str, Reader] = {"user": text, "processes": whole(1, MAX_SHARDS)}


def host_port(default_port: int | None) -> Reader:
    """A reader for 'host', 'host:port', 'ip:port' or '[ipv6]:port' (a port is
    required if default_port is None)."""

    def read(value: Any, key: str) -> HostPort:
        return parse_host_port(text(value, key), key, default_port)

    return read


def ip_port(default_port: int | None) -> Reader:
    """host_port, for an IP address only: where a name could resolve to anything (a
    listener's address: bound as given, loopback today and public tomorrow)."""

    def read(value: Any, key: str) -> HostPort:
        address = parse_host_port(text(value, key), key, default_port)
        if not address.is_ip:
            example = f'"127.0.0.1:{address.port}", "[::1]:{address.port}"'
            raise ConfigError(key, f"{address.host!r} is not an IP address (e.g. {example})")
        return address

    return read


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


def parse_host_port(value: str, key: str, default_port: int | None) -> HostPort:
    match = _HOST_PORT.match(value.strip())
    if not match:
        raise ConfigError(key, f"{value!r} is not host:port (use [addr]:port for IPv6)")
    name = match.group("v6") or match.group("host")
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise ConfigError(key, f"{name!r} is not an IPv6 address") from None
    else:
        name = host(name, key)
    number = int(match.group("port")) if match.group("port") else default_port
    if number is None:
        # A listener without one would bind port 25 silently.
        raise ConfigError(key, f'{value!r} needs a port, e.g. "{value}:2525"')
    if not 0 < number < 65536:
        raise ConfigError(key, f"port {number} out of range")
    return HostPort(name.lower(), number)


_DELIVERY: Mapping[str, Reader] = {
    "helo_name": host_name,
    "connect_timeout": seconds,
    "command_timeout": seconds,
    "data_timeout": seconds,
    "connection_idle_time": seconds,
    "destination_concurrency": count,
    "port": port,
    "max_mx_addresses": count,
}

_USER: Mapping[str, Reader] = {"password_hash": text, "addresses": list_of(text)}


def _level(value: Any, key: str) -> Level:
    if value not in [level.value for level in CONFIG_LEVELS]:
        choices = ", ".join(level.value for level in CONFIG_LEVELS)
        raise ConfigError(key, f"{value!r} is not a TLS level (one of {choices})")
    return Level(value)


def _remember(value: Any, key: str) -> bool | tuple[str, ...]:
    if isinstance(value, list):
        return list_of(domain_key)(value, key)
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true, false or a list of domains")
    return value


def _ca_file(value: Any, key: str) -> Path:
    from cryptography import x509

    file = readable_file(value, key)
    try:
        certs = x509.load_pem_x509_certificates(file.read_bytes())
    except ValueError as exc:
        raise ConfigError(key, f"{file} holds no PEM certificates ({exc})") from None
    if not certs:
        raise ConfigError(key, f"{file} holds no PEM certificates")
    return file


def _policy(value: Any, key: str) -> dict[str, Level]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return {
        domain if domain == "*" else domain_key(domain, f'{key}."{domain}"'): _level(
            level, f'{key}."{domain}"'
        )
        for domain, level in value.items()
    }


_TLS: Mapping[str, Reader] = {
    "tempfail_fallback": boolean,
    "ca_file": _ca_file,
    "policy": _policy,
    "default_level": _level,
    "remember": _remember,
    "remember_for": seconds,
    "mta_sts": boolean,
    "mta_sts_ca_file": _ca_file,
    "mta_sts_port": port,
    "reporting": boolean,
    "report_organization": text,
    "report_contact": text,
    "dane": boolean,
}


def _tls(raw: Mapping[str, Any]) -> TlsSettings:
    values = read_table(raw, "tls", _TLS)
    levels = values.pop("policy", {})
    default = levels.pop("*", values.pop("default_level", Level.MAY))
    return TlsSettings(**values, policy=PolicyTable(levels=tuple(levels.items()), default=default))


_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
# RFC 8314 7.3: 465 is submissions (implicit TLS); plain SMTP keeps the MX port.
_SCHEME_PORTS = {Scheme.SMTP: 25, Scheme.SMTPS: 465}


def _route(value: Any, key: str) -> HostPort:
    """'smtps://host:port', 'smtp://host:port' or 'host:port' (smtp)."""
    target = text(value, key).strip()
    scheme = Scheme.SMTP
    if match := _SCHEME.match(target):
        try:
            scheme = Scheme(match.group("scheme").lower())
        except ValueError:
            known = ", ".join(f"{s.value}://" for s in Scheme)
            raise ConfigError(key, f"{target!r}: unknown scheme (known: {known})") from None
        target = match.group("rest")
    hop = parse_host_port(target, key, _SCHEME_PORTS[scheme])
    return dataclasses.replace(hop, scheme=scheme)


def _routes(raw: Mapping[str, Any]) -> dict[str, tuple[HostPort, ...]]:
    routes: dict[str, tuple[HostPort, ...]] = {}
    for domain, targets in raw.items():
        key = f'routes."{domain}"'
        name = domain if domain == "*" else domain_key(domain, key)
        hops = [targets] if isinstance(targets, str) else targets
        routes[name] = list_of(_route, empty=False)(hops, key)
    return routes


def _auth_level(value: Any, key: str) -> Level:
    # Credentials never go in clear: only the two levels that require TLS.
    if value not in (Level.ENCRYPT.value, Level.VERIFY.value):
        raise ConfigError(key, f'{value!r} is not "verify" or "encrypt" (AUTH needs TLS)')
    return Level(value)


_RELAY_AUTH: Mapping[str, Reader] = {
    "username": text,
    "password_file": secret_file,
    "tls": _auth_level,
}


def _relay_auth(
    raw: Mapping[str, Any], routes: Mapping[str, tuple[HostPort, ...]]
) -> dict[str, RelayAuth]:
    route_hosts = {hop.host for hops in routes.values() for hop in hops}
    entries: dict[str, RelayAuth] = {}
    for name, entry in raw.items():
        where = f'relay_auth."{name}"'
        if not isinstance(entry, dict):
            raise ConfigError(where, "must be a table")
        hostname = host(name, where)
        if hostname not in route_hosts:
            raise ConfigError(where, "no [routes] entry names this host")
        values = read_table(entry, where, _RELAY_AUTH)
        for required in ("username", "password_file"):
            if required not in values:
                raise ConfigError(f"{where}.{required}", "missing")
        password_file: Path = values["password_file"]
        password = read_secret(password_file, f"{where}.password_file")
        entries[hostname] = RelayAuth(**values, password=password)
    return entries


_nameserver = ip_port(53)


_DNS: Mapping[str, Reader] = {"nameservers": list_of(_nameserver), "timeout": seconds}


def _dns(raw: Mapping[str, Any]) -> DnsSettings:
    return DnsSettings(**read_table(raw, "dns", _DNS))


def _mailbox(value: Any, key: str) -> str:
    from .errors import AddressError
    from .message import check_address

    address = text(value, key)
    try:
        check_address(address)
    except AddressError as exc:
        raise ConfigError(key, str(exc)) from None
    return address


def _probe_sender(value: Any, key: str) -> str:
    return "" if value == "" else _mailbox(value, key)


_VERIFICATION: Mapping[str, Reader] = {
    "mode": choice(VerifyMode),
    "recipients_file": readable_file,
    "positive_ttl": seconds,
    "negative_ttl": seconds,
    "wait": seconds,
    "probe_timeout": seconds,
    "max_probes": count,
    "cache_size": count,
    "sender": _probe_sender,
}


def _recipient_verification(raw: Mapping[str, Any]) -> RecipientVerification:
    where = "recipient_verification"
    values = read_table(raw, where, _VERIFICATION)
    mode = values.get("mode", VerifyMode.PROBE)
    if mode is VerifyMode.LIST and "recipients_file" not in values:
        raise ConfigError(f"{where}.recipients_file", 'missing (mode = "list" needs it)')
    if mode is not VerifyMode.LIST and "recipients_file" in values:
        raise ConfigError(f"{where}.recipients_file", 'only read with mode = "list"')
    return RecipientVerification(**values)


_LOCAL: Mapping[str, Reader] = {
    "postmaster": _mailbox,
    "domain": host_name,
    "aliases": readable_file,
}


def _dkim(raw: Mapping[str, Any]) -> dict[str, DkimDomain]:
    if not raw:
        return {}  # sendmail's start-up, without [dkim], imports none of it
    from .dkim.settings import parse_dkim

    return parse_dkim(raw)
