"""Configuration: TOML in, frozen dataclasses out, every mistake named by its key.

Validation is strict on purpose: an unknown key is far more often a typo than
an intention, and a typo in a TLS policy silently weakens it. `load_config`
raises ConfigError(key, reason); the CLI turns that into exit status 78.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config_fields import (
    Reader,
    boolean,
    choice,
    count,
    domain_key,
    host,
    host_name,
    list_of,
    network,
    only,
    path,
    port,
    read_secret,
    read_table,
    readable_file,
    seconds,
    secret_file,
    size,
    text,
    whole,
)
from .errors import ConfigError
from .resolver import is_ip
from .retry import RetrySchedule
from .tls.policy import CONFIG_LEVELS, Level, PolicyTable

if TYPE_CHECKING:
    from .dkim.settings import DkimDomain
    from .listener_settings import ListenerSettings
    from .passwords import PasswordHash


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
class QueueSettings:
    # Relative paths are taken from the working directory at start-up.
    directory: Path = Path("relaymail-data")
    lifetime: float = 5 * 86400.0  # then deferred recipients bounce (Postfix: 5d)
    delay_warning: float = 4 * 3600.0  # one warning to the sender, then silence
    retry: RetrySchedule = field(default_factory=RetrySchedule)
    max_deliveries: int = 200  # messages in delivery at once, all destinations
    # A cap on the queue's size on disk; past it new mail gets 452 4.3.1, as on a
    # full disk (Postfix's queue_minfree, seen from the other side).
    max_size: int | None = None


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


@dataclass(frozen=True, slots=True)
class ServerSettings:
    # The account `serve` becomes once its listeners are bound, when started as
    # root (relaymail.service); None: it stays who it was started as.
    user: str | None = None


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
    dkim: Mapping[str, DkimDomain] = field(default_factory=dict)  # by From: domain
    # Raw [[listener]] tables, checked by check_server_config; built by listeners() on
    # demand so that short commands (sendmail) need not import the SMTP server.
    listener_tables: tuple[Mapping[str, Any], ...] = ()
    user_table: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None

    def listeners(self) -> list[ListenerSettings]:
        """The [[listener]] tables; by default one relay listener on 127.0.0.1:2525."""
        tables = self.listener_tables or ({"address": "127.0.0.1:2525"},)
        return [
            _listener(table, i, self.delivery.helo_name, self.local.postmaster)
            for i, table in enumerate(tables)
        ]

    def users(self) -> dict[str, PasswordHash]:
        from .passwords import parse_users

        try:
            return parse_users(self.user_table)
        except ValueError as exc:
            raise ConfigError("users", str(exc)) from None


SYSTEM_CONFIG = Path("/etc/relaymail/relaymail.toml")


def find_config(explicit: Path | None) -> Path | None:
    """The file to use: the one named, else $RELAYMAIL_CONFIG, else the system one if present.

    None means the embedded defaults. Every command (serve, sendmail, queue)
    looks in the same places, so they agree on where the queue is.
    """
    if explicit is not None:
        return explicit
    if env := os.environ.get("RELAYMAIL_CONFIG"):
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(path: Path | None) -> Config:
    """Read and validate `path`; None gives the embedded defaults."""
    if path is None:
        return parse_config({})  # the defaults that derive from others (local.domain) included
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    return parse_config(raw, source=path)


def parse_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    sections = {"delivery", "tls", "routes", "relay_auth", "dns", "queue", "listener", "users"}
    only(raw, "", sections | {"local", "server", "dkim"})
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list) or not all(isinstance(t, dict) for t in listeners):
        raise ConfigError("listener", "must be an array of tables ([[listener]])")
    users = _table(raw, "users")
    for user, value in users.items():
        text(user, "users")
        text(value, f'users."{user}"')
    routes = _routes(_table(raw, "routes"))
    delivery = DeliverySettings(**read_table(_table(raw, "delivery"), "delivery", _DELIVERY))
    return Config(
        delivery=delivery,
        tls=_tls(_table(raw, "tls")),
        routes=routes,
        relay_auth=_relay_auth(_table(raw, "relay_auth"), routes),
        dns=_dns(_table(raw, "dns")),
        queue=QueueSettings(**read_table(_table(raw, "queue"), "queue", _QUEUE)),
        local=LocalSettings(
            **{"domain": delivery.helo_name, **read_table(_table(raw, "local"), "local", _LOCAL)}
        ),
        server=ServerSettings(**read_table(_table(raw, "server"), "server", {"user": text})),
        dkim=_dkim(_table(raw, "dkim")),
        listener_tables=tuple(listeners),
        user_table=dict(users),
        source=source,
    )


def check_server_config(config: Config) -> None:
    """Build what only `serve` uses, so its mistakes too are named at start-up."""
    listeners = config.listeners()
    users = config.users()
    for i, listener in enumerate(listeners):
        for j, other in enumerate(listeners[:i]):
            if (other.host, other.port) == (listener.host, listener.port):
                raise ConfigError(f"listener[{i}].address", f"the same as listener[{j}]'s")
        if listener.auth_required and not users:
            raise ConfigError(f"listener[{i}]", "requires AUTH but [users] is empty")
        if listener.mode != "relay" and listener.tls_cert_file is None:
            raise ConfigError(
                f"listener[{i}].tls_cert_file", f"a {listener.mode} listener needs one"
            )
    if config.server.user is not None:
        from .service import lookup_user

        lookup_user(config.server.user)


def host_port(default_port: int | None) -> Reader:
    """A reader for 'host', 'host:port', 'ip:port' or '[ipv6]:port' (a port is
    required if default_port is None)."""

    def read(value: Any, key: str) -> HostPort:
        return parse_host_port(text(value, key), key, default_port)

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


def _retry(value: Any, key: str) -> RetrySchedule:
    return RetrySchedule(list_of(seconds, empty=False)(value, key))


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

_QUEUE: Mapping[str, Reader] = {
    "directory": path,
    "lifetime": seconds,
    "delay_warning": seconds,
    "retry": _retry,
    "max_deliveries": count,
    "max_size": size,
}


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
    for name, table in raw.items():
        where = f'relay_auth."{name}"'
        if not isinstance(table, dict):
            raise ConfigError(where, "must be a table")
        hostname = host(name, where)
        if hostname not in route_hosts:
            raise ConfigError(where, "no [routes] entry names this host")
        values = read_table(table, where, _RELAY_AUTH)
        for required in ("username", "password_file"):
            if required not in values:
                raise ConfigError(f"{where}.{required}", "missing")
        password_file: Path = values["password_file"]
        password = read_secret(password_file, f"{where}.password_file")
        entries[hostname] = RelayAuth(**values, password=password)
    return entries


def _nameserver(value: Any, key: str) -> HostPort:
    server = parse_host_port(text(value, key), key, default_port=53)
    if not server.is_ip:
        raise ConfigError(key, f"{server.host!r} is not an IP address")
    return server


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


_LOCAL: Mapping[str, Reader] = {
    "postmaster": _mailbox,
    "domain": host_name,
    "aliases": readable_file,
}


# [[listener]] keys left out take these values (then ListenerSettings' own).
LISTENER_DEFAULTS: Mapping[str, Any] = {"relay_networks": ["127.0.0.0/8", "::1/128"]}

_LISTENER: Mapping[str, Reader] = {
    "address": host_port(None),
    "relay_networks": list_of(network),
    "relay_domains": list_of(domain_key),
    "tls_cert_file": readable_file,
    "tls_key_file": readable_file,
    "require_auth": boolean,
    "max_message_size": size,
    "max_recipients": count,
    # RFC 5321 4.5.3.1.6 lets no one go below 1000 octets; 80 is a sanity floor.
    "max_line_length": whole(80),
    "max_connections": count,
    "max_commands_per_verb": count,
    "max_auth_failures": count,
    "max_received_headers": count,
    "idle_timeout": seconds,
    "hostname": host_name,
}


def _listener(
    raw: Mapping[str, Any], index: int, hostname: str, postmaster: str | None
) -> ListenerSettings:
    from .listener_settings import ListenerMode, ListenerSettings, LongLines

    where = f"listener[{index}]"
    if "address" not in raw:
        raise ConfigError(f"{where}.address", 'missing (e.g. "127.0.0.1:2525")')
    fields = {**_LISTENER, "mode": choice(ListenerMode), "long_lines": choice(LongLines)}
    values = read_table({**LISTENER_DEFAULTS, **raw}, where, fields)
    address: HostPort = values.pop("address")
    cert, key = values.get("tls_cert_file"), values.get("tls_key_file")
    if cert is None and key is not None:
        raise ConfigError(f"{where}.tls_cert_file", "missing (tls_key_file needs it)")
    if cert is not None and key is None:
        raise ConfigError(f"{where}.tls_key_file", "missing (tls_cert_file needs it)")
    if cert is not None and key is not None:
        _check_key_pair(cert, key, where)
    return ListenerSettings(
        **{"hostname": hostname, **values},
        host=address.host,
        port=address.port,
        postmaster=postmaster,
    )


def _check_key_pair(cert: Path, key: Path, where: str) -> None:
    """Load a listener's certificate and key as the server will, naming the real defect.

    OpenSSL's own error for a mismatch ("key values mismatch") names neither file.
    """
    import ssl  # here: sendmail and the queue commands load this module too

    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_key, key_key = f"{where}.tls_cert_file", f"{where}.tls_key_file"
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
    except ValueError:
        raise ConfigError(cert_key, f"{cert} holds no PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except TypeError:
        raise ConfigError(key_key, f"{key} is encrypted; a passphrase cannot be given") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(key_key, f"{key} holds no PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise ConfigError(key_key, f"{key} does not match the certificate in {cert}")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(cert_key, f"TLS refuses {cert}: {exc.reason or exc}") from None


def _dkim(raw: Mapping[str, Any]) -> dict[str, DkimDomain]:
    if not raw:
        return {}  # sendmail's start-up, without [dkim], imports none of it
    from .dkim.settings import parse_dkim

    return parse_dkim(raw)


def _table(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    return value
