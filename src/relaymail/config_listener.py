"""[[listener]] tables of the configuration: TOML in, ListenerSettings out.

Loaded only where listeners are built (`serve`, `relaymail check`), so short commands
such as `sendmail` import neither the SMTP server's settings nor ssl.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import HostPort, ip_port
from .config_fields import (
    Reader,
    boolean,
    choice,
    count,
    domain_key,
    list_of,
    network,
    read_table,
    readable_file,
    seconds,
    whole,
)
from .config_values import host_name, size
from .errors import ConfigError
from .listener_settings import LimitSettings, ListenerMode, ListenerSettings, LongLines

__all__ = ["LISTENER_DEFAULTS", "listener_settings"]

# [[listener]] keys left out take these values (then ListenerSettings' own).
LISTENER_DEFAULTS: Mapping[str, Any] = {"relay_networks": ["127.0.0.0/8", "::1/128"]}

_LISTENER: Mapping[str, Reader] = {
    "address": ip_port(None),
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
    "sender_login_binding": boolean,
}

# [[listener]] keys of its per-client limits: key -> (LimitSettings field, reader).
_CLIENT_LIMITS: Mapping[str, tuple[str, Reader]] = {
    "max_connections_per_client": ("max_connections", count),
    "max_connection_rate_per_client": ("connection_rate", count),
    "max_message_rate_per_client": ("message_rate", count),
    "max_auth_failures_per_client": ("auth_failures", count),
    "auth_failure_delay": ("auth_delay", seconds),
    "auth_block_time": ("auth_block_time", seconds),
}


def listener_settings(
    raw: Mapping[str, Any], index: int, hostname: str, postmaster: str | None
) -> ListenerSettings:
    """The [[listener]] table number `index`, checked, with the defaults filled in."""
    where = f"listener[{index}]"
    if "address" not in raw:
        raise ConfigError(f"{where}.address", 'missing (e.g. "127.0.0.1:2525")')
    fields = {
        **_LISTENER,
        "mode": choice(ListenerMode),
        "long_lines": choice(LongLines),
        **{key: reader for key, (_, reader) in _CLIENT_LIMITS.items()},
    }
    values = read_table({**LISTENER_DEFAULTS, **raw}, where, fields)
    limits = {name: values.pop(key) for key, (name, _) in _CLIENT_LIMITS.items() if key in values}
    values["client_limits"] = LimitSettings(**limits)
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
