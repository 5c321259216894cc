"""Configuration: TOML in, frozen dataclasses out, every mistake named by its key.

Validation is strict on purpose: an unknown key is far more often a typo than
an intention, and a typo in a TLS policy silently weakens it. `load_config`
raises ConfigError(key, reason); the CLI turns that into exit status 78.
"""

from __future__ import annotations

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

from .errors import ConfigError
from .retry import RetrySchedule
from .tls.policy import CONFIG_LEVELS, Level, PolicyTable

if TYPE_CHECKING:
    from .passwords import PasswordHash
    from .server import ListenerSettings


@dataclass(frozen=True, slots=True)
class HostPort:
    """A next hop from [routes] or a name server from [dns]: host name or IP literal, port."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

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


@dataclass(frozen=True, slots=True)
class Config:
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    routes: Mapping[str, tuple[HostPort, ...]] = field(default_factory=dict)
    dns: DnsSettings = field(default_factory=DnsSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    # Raw [[listener]] tables, checked by load_config; built by listeners() on demand
    # so that short commands (sendmail) need not import the SMTP server.
    listener_tables: tuple[Mapping[str, Any], ...] = ()
    user_table: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None

    def listeners(self) -> list[ListenerSettings]:
        """The [[listener]] tables; by default one relay listener on 127.0.0.1:2525."""
        tables = self.listener_tables or (DEFAULT_LISTENER,)
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


DEFAULT_LISTENER: Mapping[str, Any] = {
    "address": "127.0.0.1:2525",
    "mode": "relay",
    "relay_networks": ["127.0.0.0/8", "::1/128"],
}


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
        return Config()
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
    _only(raw, "", {"delivery", "tls", "routes", "dns", "queue", "listener", "users", "local"})
    listeners = raw.get("listener", [])
    if not isinstance(listeners, list) or not all(isinstance(t, dict) for t in listeners):
        raise ConfigError("listener", "must be an array of tables ([[listener]])")
    users = _table(raw, "users")
    for user, value in users.items():
        _string(value, f'users."{user}"')
    config = Config(
        delivery=_delivery(_table(raw, "delivery")),
        tls=_tls(_table(raw, "tls")),
        routes=_routes(_table(raw, "routes")),
        dns=_dns(_table(raw, "dns")),
        queue=_queue(_table(raw, "queue")),
        local=_local(_table(raw, "local")),
        listener_tables=tuple(listeners),
        user_table=dict(users),
        source=source,
    )
    return config


def check_server_config(config: Config) -> None:
    """Build what only `serve` uses, so its mistakes too are named at start-up."""
    listeners = config.listeners()
    users = config.users()
    for i, listener in enumerate(listeners):
        if listener.auth_required and not users:
            raise ConfigError(f"listener[{i}]", "requires AUTH but [users] is empty")
        if listener.mode != "relay" and listener.tls_cert_file is None:
            raise ConfigError(
                f"listener[{i}].tls_cert_file", f"a {listener.mode} listener needs one"
            )


def _queue(raw: Mapping[str, Any]) -> QueueSettings:
    _only(
        raw,
        "queue",
        {"directory", "lifetime", "delay_warning", "retry", "max_deliveries", "max_size"},
    )
    values: dict[str, Any] = {}
    if "directory" in raw:
        values["directory"] = Path(_string(raw["directory"], "queue.directory"))
    for key in ("lifetime", "delay_warning"):
        if key in raw:
            values[key] = parse_duration(raw[key], f"queue.{key}")
    if "retry" in raw:
        intervals = raw["retry"]
        if not isinstance(intervals, list) or not intervals:
            raise ConfigError("queue.retry", 'must be a list of durations, e.g. ["1m", "5m", "1h"]')
        values["retry"] = RetrySchedule(tuple(parse_duration(v, "queue.retry") for v in intervals))
    if "max_deliveries" in raw:
        values["max_deliveries"] = _positive_int(raw["max_deliveries"], "queue.max_deliveries")
    if "max_size" in raw:
        values["max_size"] = parse_size(raw["max_size"], "queue.max_size")
    return QueueSettings(**values)


def _local(raw: Mapping[str, Any]) -> LocalSettings:
    _only(raw, "local", {"postmaster"})
    if "postmaster" not in raw:
        return LocalSettings()
    from .errors import AddressError
    from .message import check_address

    postmaster = _string(raw["postmaster"], "local.postmaster")
    try:
        check_address(postmaster)
    except AddressError as exc:
        raise ConfigError("local.postmaster", str(exc)) from None
    return LocalSettings(postmaster=postmaster)


_LISTENER_KEYS = {
    "address", "mode", "relay_networks", "relay_domains", "tls_cert_file", "tls_key_file",
    "require_auth", "max_message_size", "max_recipients", "max_line_length", "max_connections",
    "max_commands_per_verb", "max_auth_failures", "max_received_headers", "idle_timeout",
    "hostname", "long_lines",
}  # fmt: skip


def _listener(
    raw: Mapping[str, Any], index: int, hostname: str, postmaster: str | None
) -> ListenerSettings:
    from .long_lines import LongLines
    from .server import ListenerMode, ListenerSettings

    where = f"listener[{index}]"
    _only(raw, where, _LISTENER_KEYS)
    if "address" not in raw:
        raise ConfigError(f"{where}.address", 'missing (e.g. "127.0.0.1:2525")')
    address = parse_host_port(_string(raw["address"], f"{where}.address"), f"{where}.address", 25)
    values: dict[str, Any] = {
        "host": address.host, "port": address.port, "hostname": hostname, "postmaster": postmaster,
    }  # fmt: skip
    for key, value in raw.items():
        if key == "address":
            continue
        if key in ("mode", "long_lines"):
            choices: type[enum.StrEnum] = ListenerMode if key == "mode" else LongLines
            try:
                value = choices(value)
            except ValueError:
                names = ", ".join(c.value for c in choices)
                raise ConfigError(f"{where}.{key}", f"{value!r} is not one of {names}") from None
        elif key == "relay_networks":
            value = tuple(_network(n, f"{where}.relay_networks") for n in _list(value, where, key))
        elif key == "relay_domains":
            value = tuple(_string(d, f"{where}.relay_domains") for d in _list(value, where, key))
        elif key in ("tls_cert_file", "tls_key_file"):
            value = Path(_string(value, f"{where}.{key}"))
            if not value.is_file():
                raise ConfigError(f"{where}.{key}", f"{value} is not a readable file")
        elif key == "idle_timeout":
            value = parse_duration(value, f"{where}.{key}")
        elif key == "max_message_size":
            value = parse_size(value, f"{where}.{key}")
        elif key == "require_auth" and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}", "must be true or false")
        values[key] = value
    try:
        return ListenerSettings(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.key}", exc.reason) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, str(exc)) from None


def _network(value: Any, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_string(value, key), strict=False)
    except ValueError:
        raise ConfigError(key, f'{value!r} is not a network like "127.0.0.0/8"') from None


def _list(value: Any, where: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}", "must be a list")
    return value


def parse_size(value: Any, key: str) -> int:
    """Octets from a number or a string such as '10M', '512K', '1G'."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", value, re.I)):
        factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
        if int(m.group(1)) > 0:
            return int(m.group(1)) * factor
    raise ConfigError(key, f'expected a size like "35M", not {value!r}')


def _delivery(raw: Mapping[str, Any]) -> DeliverySettings:
    _only(raw, "delivery", {f for f in DeliverySettings.__dataclass_fields__})
    values: dict[str, Any] = {}
    if "helo_name" in raw:
        values["helo_name"] = _hostname(raw["helo_name"], "delivery.helo_name")
    for key in ("connect_timeout", "command_timeout", "data_timeout", "connection_idle_time"):
        if key in raw:
            values[key] = _seconds(raw[key], f"delivery.{key}")
    if "port" in raw:
        values["port"] = _positive_int(raw["port"], "delivery.port")
        if values["port"] > 65535:
            raise ConfigError("delivery.port", f"port {values['port']} out of range")
    if "destination_concurrency" in raw:
        values["destination_concurrency"] = _positive_int(
            raw["destination_concurrency"], "delivery.destination_concurrency"
        )
    if "max_mx_addresses" in raw:
        values["max_mx_addresses"] = _positive_int(
            raw["max_mx_addresses"], "delivery.max_mx_addresses"
        )
    return DeliverySettings(**values)


def _tls(raw: Mapping[str, Any]) -> TlsSettings:
    _only(
        raw,
        "tls",
        {
            "tempfail_fallback", "ca_file", "policy", "default_level", "remember",
            "remember_for", "mta_sts", "mta_sts_ca_file", "mta_sts_port", "reporting",
            "report_organization", "report_contact", "dane",
        },
    )  # fmt: skip
    fallback = raw.get("tempfail_fallback", True)
    if not isinstance(fallback, bool):
        raise ConfigError("tls.tempfail_fallback", f"must be true or false, not {fallback!r}")
    ca_file = None
    if "ca_file" in raw:
        ca_file = Path(_string(raw["ca_file"], "tls.ca_file"))
        _check_ca_file(ca_file, "tls.ca_file")
    default = _level(raw.get("default_level", "may"), "tls.default_level")
    levels = []
    for domain, value in _table(raw, "policy", "tls.policy").items():
        key = f'tls.policy."{domain}"'
        if domain == "*":
            default = _level(value, key)
        else:
            levels.append((_domain_key(domain, key), _level(value, key)))
    remember = raw.get("remember", False)
    if isinstance(remember, list):
        remember = tuple(_domain_key(_string(d, "tls.remember"), "tls.remember") for d in remember)
    elif not isinstance(remember, bool):
        raise ConfigError("tls.remember", "must be true, false or a list of domains")
    remember_for = parse_duration(raw.get("remember_for", "30d"), "tls.remember_for")
    extra: dict[str, Any] = {}
    for key in ("mta_sts", "reporting", "dane"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ConfigError(f"tls.{key}", "must be true or false")
            extra[key] = raw[key]
    if "mta_sts_ca_file" in raw:
        extra["mta_sts_ca_file"] = Path(_string(raw["mta_sts_ca_file"], "tls.mta_sts_ca_file"))
        _check_ca_file(extra["mta_sts_ca_file"], "tls.mta_sts_ca_file")
    if "mta_sts_port" in raw:
        extra["mta_sts_port"] = _positive_int(raw["mta_sts_port"], "tls.mta_sts_port")
    for key in ("report_organization", "report_contact"):
        if key in raw:
            extra[key] = _string(raw[key], f"tls.{key}")
    return TlsSettings(
        **extra,
        tempfail_fallback=fallback,
        ca_file=ca_file,
        policy=PolicyTable(levels=tuple(levels), default=default),
        remember=remember,
        remember_for=remember_for,
    )


def _check_ca_file(path: Path, key: str) -> None:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(key, f"{path} holds no PEM certificates ({exc})") from None
    if not certs:
        raise ConfigError(key, f"{path} holds no PEM certificates")


def _routes(raw: Mapping[str, Any]) -> dict[str, tuple[HostPort, ...]]:
    routes: dict[str, tuple[HostPort, ...]] = {}
    for domain, targets in raw.items():
        key = f'routes."{domain}"'
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets:
            raise ConfigError(key, 'must be a non-empty list of "host:port" strings')
        name = domain if domain == "*" else _domain_key(domain, key)
        routes[name] = tuple(
            parse_host_port(_string(t, key), key, default_port=25) for t in targets
        )
    return routes


def _dns(raw: Mapping[str, Any]) -> DnsSettings:
    _only(raw, "dns", {"nameservers", "timeout"})
    servers = raw.get("nameservers", [])
    if not isinstance(servers, list):
        raise ConfigError("dns.nameservers", 'must be a list of "ip" or "ip:port" strings')
    parsed = tuple(
        parse_host_port(_string(s, "dns.nameservers"), "dns.nameservers", default_port=53)
        for s in servers
    )
    for server in parsed:
        if not server.is_ip:
            raise ConfigError("dns.nameservers", f"{server.host!r} is not an IP address")
    timeout = _seconds(raw["timeout"], "dns.timeout") if "timeout" in raw else 10.0
    return DnsSettings(nameservers=parsed, timeout=timeout)


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


def parse_host_port(text: str, key: str, default_port: int) -> HostPort:
    """'host', 'host:port', 'ip:port' or '[ipv6]:port'."""
    match = _HOST_PORT.match(text.strip())
    if not match:
        raise ConfigError(key, f"{text!r} is not host:port (use [addr]:port for IPv6)")
    host = match.group("v6") or match.group("host")
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{host!r} is not an IPv6 address") from None
    else:
        _hostname(host, key)
    port = int(match.group("port") or default_port)
    if not 0 < port < 65536:
        raise ConfigError(key, f"port {port} out of range")
    return HostPort(host.lower(), port)


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a string such as '30s', '15m', '4h', '5d'."""
    if isinstance(value, bool):
        raise ConfigError(key, f'expected a duration like "4h", not {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (
        m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value)
    ):
        unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        seconds = float(m.group(1)) * unit
    else:
        raise ConfigError(key, f'expected a duration like "30s", "4h" or "5d", not {value!r}')
    if seconds <= 0:
        raise ConfigError(key, "must be greater than zero")
    return seconds


_seconds = parse_duration


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a positive whole number, not {value!r}")
    return value


def _level(value: Any, key: str) -> Level:
    if value not in [level.value for level in CONFIG_LEVELS]:
        choices = ", ".join(level.value for level in CONFIG_LEVELS)
        raise ConfigError(key, f"{value!r} is not a TLS level (one of {choices})")
    return Level(value)


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _hostname(value: Any, key: str) -> str:
    text = _string(value, key).rstrip(".")
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not text or len(text) > 253 or not all(_LABEL.match(label) for label in text.split(".")):
        raise ConfigError(key, f"{value!r} is not a valid host name")
    return text.lower()


def _domain_key(domain: str, key: str) -> str:
    """A domain as a table key; a leading dot means 'every subdomain of'."""
    if domain.startswith("."):
        return "." + _hostname(domain[1:], key)
    return _hostname(domain, key)


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, not {type(value).__name__}")
    return value


def _table(raw: Mapping[str, Any], name: str, key: str | None = None) -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(key or name, "must be a table")
    return value


def _only(raw: Mapping[str, Any], section: str, allowed: set[str]) -> None:
    for name in raw:
        if name not in allowed:
            where = f"{section}.{name}" if section else name
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")
