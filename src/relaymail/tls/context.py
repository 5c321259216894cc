"""TLS for outbound sessions: one client context, and the facts a session records.

Every session handshakes with verification off and then checks the peer's
chain itself (tls/verify.py, or the TLSA records under DANE). One mechanism
serves every level: `may` reports `verified` without acting on it, `verify`
fails the host before a single command is sent over the unverified channel,
and the failure reason is precise enough for TLS reporting (expired vs. wrong
name vs. unknown CA). Verification inside the handshake would abort it
instead, leaving `may` with nothing to report.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from .policy import Event, Level
from .verify import VERIFIED, VerifyResult


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a person wants to know about the server's certificate."""

    subject: str
    issuer: str
    not_after: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicyJudgement:
    """What a session's TLS step saw, and the host policy that judged it.

    It says *why* a session went in clear (not offered, a 4xx, a failed handshake) and
    under which level; the status page and its history count sessions by it.
    """

    event: Event | None  # None: STARTTLS was not asked (level none)
    level: Level
    source: str  # where the level comes from, e.g. "default level", "MTA-STS enforce ..."


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """The TLS outcome of one session, as recorded in results and logs."""

    used: bool
    version: str | None = None
    cipher: str | None = None
    verification: VerifyResult | None = None  # None when TLS was not used
    certificate: PeerCertificate | None = None
    judgement: PolicyJudgement | None = None  # None: no session got as far as TLS

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.verified

    @property
    def verify_error(self) -> str | None:
        """Why the certificate was not verified, result type first, for people to read."""
        if self.verification is None or self.verification.verified:
            return None
        return str(self.verification)

    def to_json(self) -> dict[str, Any]:
        """The facts results and the queue keep: the verify error and certificate stay in logs."""
        return {
            "used": self.used,
            "version": self.version,
            "cipher": self.cipher,
            "verified": self.verified,
        }

    @classmethod
    def from_json(cls, facts: Mapping[str, Any]) -> TlsFacts:
        """The facts `to_json` gave; a missing field takes its default."""
        return cls(
            used=bool(facts.get("used", False)),
            version=facts.get("version"),
            cipher=facts.get("cipher"),
            # The reason a certificate failed is not kept (it stays in the logs).
            verification=VERIFIED if facts.get("verified") else None,
        )


CLEAR = TlsFacts(used=False)

# _ssl.ENCODING_DER: the private module's constant has no public alias before 3.13.
_ENCODING_DER = 2


def client_context() -> ssl.SSLContext:
    """The context for every outbound STARTTLS; certificates are checked after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # RFC 7435 opportunistic security: any protocol the library still allows
    # beats cleartext, so keep OpenSSL's defaults (TLS 1.2+) and nothing stricter.
    return context


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
