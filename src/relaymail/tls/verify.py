"""Certificate verification for `verify`: OpenSSL's chain rules, RFC 6125 names.

Postfix and Exim verify peers with OpenSSL, so a private CA that `openssl
verify` accepts must be accepted here too. The common one-liner
`openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=ca` makes a CA without
keyUsage, and `openssl x509 -req` without an extension file makes a v1 leaf
that names its host in the CN only; cryptography's verifier implements the
Web PKI profile (CA/Browser Forum) and refuses both. So the chain goes to
OpenSSL's X509_verify_cert (through pyOpenSSL, as the stdlib does not expose
it), the leaf's purpose is checked as OpenSSL's "ssl_server" purpose does, and
the name is matched here by RFC 6125 as OpenSSL's X509_check_host does.

A failed check names its TLS-RPT result type (RFC 8460 4.3) as a value beside
the words, so the report's class never depends on how a reason is phrased.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from .results import ResultType

# X509_V_ERR_* codes that mean "no path to a trust anchor" (openssl/x509_vfy.h).
_UNTRUSTED = frozenset({2, 18, 19, 20, 21, 27})
_EXPIRED = 10


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """A certificate check: verified, or the RFC 8460 result type and the words for why not."""

    verified: bool
    result_type: ResultType | None = None  # set exactly when not verified
    reason: str = ""

    def __post_init__(self) -> None:
        if self.verified is (self.result_type is not None):
            raise ValueError("a failed check has a result type, a verified one has none")

    def __str__(self) -> str:
        return "verified" if self.verified else f"{self.result_type}: {self.reason}"


VERIFIED = VerifyResult(True)


def failed(result_type: ResultType, reason: str) -> VerifyResult:
    return VerifyResult(False, result_type, reason)


@functools.lru_cache(maxsize=8)
def openssl_store(ca_file: Path | None) -> crypto.X509Store:
    """The trust anchors: the configured file, or the system's bundle."""
    path = ca_file or Path(
        ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    )
    if not path.is_file():
        raise OSError(f"{path}: not a readable file")
    store = crypto.X509Store()
    try:
        store.load_locations(str(path))
    except crypto.Error as exc:
        raise ValueError(f"{path}: {exc}") from None
    return store


def check_peer(
    chain: list[x509.Certificate], reference: str, store: crypto.X509Store
) -> VerifyResult:
    """Whether `chain` (leaf first) is valid now for `reference` (a host name or an IP)."""
    if not chain:
        return failed(ResultType.VALIDATION_FAILURE, "the server sent no certificate")
    leaf = chain[0]
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc < now:
        expired = f"expired {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
        return failed(ResultType.CERTIFICATE_EXPIRED, expired)
    if leaf.not_valid_before_utc > now:
        return failed(ResultType.VALIDATION_FAILURE, "certificate not yet valid")
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(cert) for cert in chain[1:]],
    )
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        return _chain_failure(exc)
    if not _for_tls_servers(leaf):
        return failed(
            ResultType.VALIDATION_FAILURE, "the certificate's extendedKeyUsage excludes serverAuth"
        )
    if not matches_reference(leaf, reference):
        names = ", ".join(presented_names(leaf)) or "no name"
        return failed(ResultType.CERTIFICATE_HOST_MISMATCH, f"{reference} not in {names}")
    return VERIFIED


def _chain_failure(exc: crypto.X509StoreContextError) -> VerifyResult:
    code, depth, message = exc.errors
    subject = exc.certificate.to_cryptography().subject.rfc4514_string()
    where = f"OpenSSL: {message} at depth {depth} ({subject})"
    if code in _UNTRUSTED:
        return failed(
            ResultType.CERTIFICATE_NOT_TRUSTED,
            f"the chain does not lead to a trusted CA ({where})",
        )
    if code == _EXPIRED:
        return failed(ResultType.CERTIFICATE_EXPIRED, where)
    return failed(ResultType.VALIDATION_FAILURE, where)


def _for_tls_servers(leaf: x509.Certificate) -> bool:
    """OpenSSL's ssl_server purpose: an extendedKeyUsage, if present, allows serverAuth."""
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return any(
        usage in (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
        for usage in usages
    )


def presented_names(leaf: x509.Certificate) -> list[str]:
    """The identifiers a reference is matched against: DNS-IDs and IPs, else CN-IDs."""
    dns_ids, ips = _san(leaf)
    if dns_ids or ips:
        return dns_ids + [str(ip) for ip in ips]
    return _common_names(leaf)


def matches_reference(leaf: x509.Certificate, reference: str) -> bool:
    """RFC 6125 6.4: DNS-IDs first; CN-IDs only when the leaf has no DNS-ID (6.4.4)."""
    dns_ids, ips = _san(leaf)
    try:
        address = ipaddress.ip_address(reference.strip("[]"))
    except ValueError:
        pass
    else:
        return address in ips  # OpenSSL's X509_check_ip: iPAddress entries only
    name = reference.rstrip(".").lower()
    identifiers = dns_ids or _common_names(leaf)
    return any(_dns_match(identifier.rstrip(".").lower(), name) for identifier in identifiers)


def _dns_match(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    # 6.4.3: a wildcard is the whole left-most label and matches exactly one label;
    # like OpenSSL, not directly under a top-level domain and never partial ("w*").
    if not pattern.startswith("*.") or pattern.count(".") < 2:
        return False
    first, _, rest = name.partition(".")
    return bool(first) and rest == pattern[2:]


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _san(leaf: x509.Certificate) -> tuple[list[str], list[_Address]]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress) if isinstance(ip, _Address)]
    return list(san.get_values_for_type(x509.DNSName)), ips


def _common_names(leaf: x509.Certificate) -> list[str]:
    return [
        value if isinstance(value, str) else value.decode("utf-8", "replace")
        for value in (a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    ]
