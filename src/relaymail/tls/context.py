"""TLS for outbound sessions: one client context, and certificate checks we control.

Every session handshakes with verification off and then checks the peer's
chain itself (cryptography's X.509 verifier). One mechanism serves every level:
`may` reports `verified` without acting on it, `verify` fails the host before
a single command is sent over the unverified channel, and the failure reason
is precise enough for TLS reporting (expired vs. wrong name vs. unknown CA).
OpenSSL's own verification would abort the handshake instead, leaving `may`
with nothing to report.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a person wants to know about the server's certificate."""

    subject: str
    issuer: str
    not_after: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """The TLS outcome of one session, as recorded in results and logs."""

    used: bool
    version: str | None = None
    cipher: str | None = None
    verified: bool = False
    verify_error: str | None = None
    certificate: PeerCertificate | None = None


CLEAR = TlsFacts(used=False)

# The Web PKI profile (CA/Browser Forum rules) refuses many certificates that mail
# servers use legitimately (private CAs, a critical subjectAltName, no EKU); OpenSSL,
# which Postfix and Exim verify with, accepts them. So the leaf needs only a
# subjectAltName to match against; CA certificates keep the full Web PKI checks
# (basicConstraints, keyUsage), so a leaf can never act as an issuer.
_EE_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)

# _ssl.ENCODING_DER: the private module's constant has no public alias before 3.13.
_ENCODING_DER = 2


def client_context() -> ssl.SSLContext:
    """The context for every outbound STARTTLS; certificate checks happen in check_peer()."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # RFC 7435 opportunistic security: any protocol the library still allows
    # beats cleartext, so keep OpenSSL's defaults (TLS 1.2+) and nothing stricter.
    return context


@functools.lru_cache(maxsize=8)
def trust_store(ca_file: Path | None) -> Store:
    """The trust anchors: the configured file, or the system's bundle."""
    path = ca_file or Path(
        ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    )
    with warnings.catch_warnings():
        # Some system bundles carry old roots with non-positive serial numbers.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return Store(x509.load_pem_x509_certificates(path.read_bytes()))


def peer_chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    """The chain the server sent, leaf first.

    Python 3.13 has SSLObject.get_unverified_chain(); 3.10-3.12 expose the same
    call on the private _sslobj only, so use whichever exists.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = ssl_object._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    chain = getter() or []
    return [x509.load_der_x509_certificate(cert.public_bytes(_ENCODING_DER)) for cert in chain]


def describe(cert: x509.Certificate) -> PeerCertificate:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(
            [str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        names = ()
    return PeerCertificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc.isoformat(),
        names=names,
    )


def check_peer(
    chain: list[x509.Certificate], reference: str, store: Store
) -> tuple[bool, str | None]:
    """Whether `chain` is valid now for `reference` (a host name or an IP literal).

    Returns (verified, why not). The reason names the TLS-RPT failure class.
    """
    if not chain:
        return False, "validation-failure: the server sent no certificate"
    leaf, intermediates = chain[0], chain[1:]
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc < now:
        return False, f"certificate-expired: expired {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    if leaf.not_valid_before_utc > now:
        return False, "validation-failure: certificate not yet valid"
    builder = (
        PolicyBuilder()
        .store(store)
        .time(now)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_EE_POLICY)
    )
    try:
        builder.build_server_verifier(_subject(reference)).verify(leaf, intermediates)
        return True, None
    except VerificationError as exc:
        error = str(exc)
    # Tell a wrong name from an untrusted chain: does the chain hold for a name it carries?
    names = describe(leaf).names
    if names and names[0] != reference:
        try:
            builder.build_server_verifier(_subject(names[0])).verify(leaf, intermediates)
            return False, f"certificate-host-mismatch: {reference} not in {', '.join(names)}"
        except (VerificationError, ValueError):
            pass  # not a name problem (or a wildcard name): report the chain error
    if "candidates exhausted" in error:
        return False, "certificate-not-trusted: the chain does not lead to a trusted CA"
    return False, f"validation-failure: {error}"


def _subject(reference: str) -> DNSName | IPAddress:
    try:
        return IPAddress(ipaddress.ip_address(reference.strip("[]")))
    except ValueError:
        return DNSName(reference.rstrip(".").lower())
