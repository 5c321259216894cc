"""DANE for SMTP (RFC 7672, RFC 6698): TLSA discovery through DNSSEC, and the chain check.

Theory of operation. relaymail does not validate DNSSEC itself (dnspython cannot walk a chain
of trust); like Postfix and Exim it trusts the AD bit of a validating resolver that it reaches
over a path nobody can tamper with, in practice unbound on loopback (RFC 7672 2.1.3). Every
query here sets the DO bit, and only an answer that comes back with AD counts as "secure".
A resolver that does not validate therefore never yields DANE: everything looks insecure,
which is the safe failure (no DANE, never a false "dnssec-invalid").

For one MX host, `lookup_tlsa` decides in two steps:

1. The host's A and AAAA records (RFC 7672 2.2.3). DANE applies only when they are secure:
   the TLSA records of a host whose addresses an attacker can forge protect nothing, and
   unsigned zones are exactly where broken name servers answer TLSA queries with errors.
   A lookup that fails (SERVFAIL, timeout) is ignored when the other address family gave a
   secure answer, since delivery then uses that family only. When the secure answer came
   through a CNAME, the expanded name is the first TLSA base domain and the MX host name
   the second (RFC 7672 2.2.3).
2. The TLSA RRset at _PORT._tcp.BASE, classified as RFC 7672 2.1.1 does:

   | TLSA answer                          | status        | what delivery must do           |
   |--------------------------------------|---------------|---------------------------------|
   | usable records, AD set               | AUTHENTICATE  | TLS mandatory, the certificate  |
   |                                      |               | must match (verify_chain), no   |
   |                                      |               | fallback to clear or to another |
   |                                      |               | policy                          |
   | records, AD set, none usable         | ENCRYPT       | TLS mandatory, unauthenticated  |
   | NXDOMAIN / NODATA with AD (denial)   | NONE          | no DANE: MTA-STS or local policy|
   | any answer without AD (insecure)     | NONE          | no DANE                         |
   | SERVFAIL (bogus), timeout            | UNUSABLE      | skip this MX host; defer when   |
   |                                      |               | no host is left                 |

   Usable means DANE-TA(2) or DANE-EE(3) with a known selector and matching type and a
   digest of the right length: PKIX-TA(0) and PKIX-EE(1) are ignored for SMTP (3.1.3).
   One trap: dnspython 2.9 refuses a whole response in which a TLSA digest has the wrong
   length (over UDP it drops it and waits for the lifetime), so such an RRset ends as
   UNUSABLE rather than having the one bad record ignored. That fails closed, never open.

`verify_chain` (section 3) then authenticates the server's chain against the usable records:
DANE-EE(3) pins the leaf alone, with no name or expiry checks (3.1.1); DANE-TA(2) names a
certificate of the chain (not the leaf) as the trust anchor, and the leaf must chain to it
with valid signatures and dates and carry one of the reference names (3.1.2, 3.2.2).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.TLSA
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import DNSName
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..resolver import describe_dns_error, is_ip
from .results import ResultType
from .verify import VerifyResult

# DANE-TA verifies with cryptography, whose Web PKI profile
# (CA/Browser Forum rules) refuses many certificates that mail servers use
# legitimately (a critical subjectAltName, no EKU). So the leaf needs only a
# subjectAltName to match against; CA certificates keep the full Web PKI checks
# (basicConstraints, keyUsage), so a leaf can never act as an issuer.
_EE_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)


class Usage(enum.IntEnum):
    """TLSA certificate usages (RFC 6698 2.1.1, names from RFC 7218)."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    CERT = 0  # the full certificate, DER
    SPKI = 1  # the SubjectPublicKeyInfo, DER


class Matching(enum.IntEnum):
    FULL = 0
    SHA2_256 = 1
    SHA2_512 = 2


_DIGEST_SIZE: dict[int, int] = {Matching.SHA2_256: 32, Matching.SHA2_512: 64}


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record; its fields are plain ints because DNS may carry values nobody defined."""

    usage: int
    selector: int
    matching_type: int
    data: bytes

    @property
    def usable(self) -> bool:
        """Whether an SMTP client may use this record at all (RFC 7672 3.1.3, RFC 6698 2.1)."""
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.matching_type == Matching.FULL:
            return bool(self.data)
        # A digest of the wrong length can never match: the record is malformed.
        return _DIGEST_SIZE.get(self.matching_type) == len(self.data)

    def matches(self, cert: x509.Certificate) -> bool:
        """Whether `cert` is what this record's selector and matching type describe."""
        if not self.usable:
            return False
        selected = (
            cert.public_bytes(Encoding.DER) if self.selector == Selector.CERT else spki_der(cert)
        )
        return association_data(selected, self.matching_type) == self.data

    def __str__(self) -> str:
        data = self.data.hex()
        if len(data) > 16:
            data = data[:16] + "…"
        return f"{self.usage} {self.selector} {self.matching_type} {data}"


class DaneStatus(enum.Enum):
    """What a TLSA lookup means for delivery to that MX host (RFC 7672 2.1.1, 2.2)."""

    NONE = "none"  # DANE does not apply: the policy is what it is without DANE
    AUTHENTICATE = "authenticate"  # TLS mandatory, the chain must match a usable record
    ENCRYPT = "encrypt"  # TLS mandatory, unauthenticated: secure records, none usable
    UNUSABLE = "unusable"  # the lookup failed or was bogus: do not use this MX host


@dataclass(frozen=True, slots=True)
class DaneResult:
    """Whether a server's chain is authenticated by the TLSA records."""

    verified: bool
    reason: str
    record: TlsaRecord | None = None  # the record that matched
    result_type: ResultType | None = None  # the TLS-RPT (RFC 8460) class when not verified

    @property
    def verification(self) -> VerifyResult:
        return VerifyResult(self.verified, self.result_type, self.reason)


@dataclass(frozen=True, slots=True)
class TlsaLookup:
    """The DANE outcome for one MX host and port; `status` is the decision."""

    mx_host: str
    port: int
    reason: str  # one line for the log, whatever the outcome
    records: tuple[TlsaRecord, ...] = ()  # usable records only
    secure: bool = False  # the TLSA answer (or its denial) was DNSSEC-validated
    error: str | None = None  # why the lookup failed: the host is unusable
    result_type: ResultType | None = None  # TLS-RPT: DNSSEC_INVALID or TLSA_INVALID
    unusable: tuple[TlsaRecord, ...] = ()  # secure records that were ignored
    base_domain: str | None = None  # the TLSA base domain the records came from
    names: tuple[str, ...] = ()  # reference identifiers for DANE-TA

    @property
    def status(self) -> DaneStatus:
        if self.error is not None:
            return DaneStatus.UNUSABLE
        if self.records:
            return DaneStatus.AUTHENTICATE
        if self.secure and self.unusable:
            return DaneStatus.ENCRYPT
        return DaneStatus.NONE

    def verify(self, chain: list[x509.Certificate], *, now: dt.datetime) -> DaneResult:
        """verify_chain() with this lookup's records and reference names."""
        return verify_chain(self.records, chain, self.mx_host, now=now, names=self.names)


def association_data(selected: bytes, matching_type: int) -> bytes:
    """The certificate association data of RFC 6698 2.1.3 for the selected DER bytes."""
    if matching_type == Matching.SHA2_256:
        return hashlib.sha256(selected).digest()
    if matching_type == Matching.SHA2_512:
        return hashlib.sha512(selected).digest()
    if matching_type == Matching.FULL:
        return selected
    raise ValueError(f"unknown TLSA matching type {matching_type}")


def spki_der(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo exactly as encoded in the certificate.

    RFC 6698 2.1.2 hashes the structure as found in the certificate. Re-encoding the parsed
    key usually gives the same bytes, but not always (an RSA AlgorithmIdentifier without
    its NULL parameters, say), so take the bytes from the TBSCertificate itself.
    """
    tbs = cert.tbs_certificate_bytes
    _, position, _ = _der_header(tbs, 0)  # into the TBSCertificate SEQUENCE
    if tbs[position] == 0xA0:  # [0] EXPLICIT version, absent for v1 certificates
        position = _der_header(tbs, position)[2]
    # serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo.
    for _ in range(5):
        position = _der_header(tbs, position)[2]
    start, _, end = _der_header(tbs, position)
    return tbs[start:end]


def _der_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """(start, content start, end) of the DER element at `offset`."""
    length = data[offset + 1]
    content = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[content : content + count], "big")
        content += count
    return offset, content, content + length


def verify_chain(
    records: Iterable[TlsaRecord],
    chain: list[x509.Certificate],
    mx_host: str,
    *,
    now: dt.datetime,
    names: Sequence[str] = (),
) -> DaneResult:
    """Whether `chain` (leaf first, as sent) is authenticated by `records` (RFC 7672 3).

    `mx_host` and `names` are the reference identifiers for DANE-TA name checks: the MX host
    name and the TLSA base domain when it differs (RFC 7672 3.2.2). DANE-EE ignores them.
    """
    usable = [record for record in records if record.usable]
    if not usable:
        return DaneResult(False, "no usable TLSA records", result_type=ResultType.TLSA_INVALID)
    if not chain:
        return DaneResult(
            False, "the server sent no certificate", result_type=ResultType.VALIDATION_FAILURE
        )
    leaf = chain[0]
    end_entity = [r for r in usable if r.usage == Usage.DANE_EE]
    for record in end_entity:
        # RFC 7672 3.1.1: the key is the identity; names and dates do not matter.
        if record.matches(leaf):
            return DaneResult(True, f"DANE-EE record {record} matches the server key", record)
    anchors = [r for r in usable if r.usage == Usage.DANE_TA]
    if anchors:
        result = _verify_dane_ta(anchors, chain, _reference_names(mx_host, names), now)
        if result.verified or not end_entity:
            return result
        return DaneResult(
            False,
            f"no DANE-EE record matches the server certificate, and {result.reason}",
            result_type=result.result_type,
        )
    return DaneResult(
        False,
        f"no DANE-EE record matches the server certificate ({_describe(leaf)})",
        # RFC 8460 4.3.1: no trust anchor validates it; for DANE-EE the key is the anchor.
        result_type=ResultType.CERTIFICATE_NOT_TRUSTED,
    )


def _verify_dane_ta(
    records: list[TlsaRecord],
    chain: list[x509.Certificate],
    names: tuple[str, ...],
    now: dt.datetime,
) -> DaneResult:
    """DANE-TA(2): a certificate the server sent, not the leaf, is the trust anchor.

    RFC 7672 3.1.2 obliges servers to send the trust anchor certificate, even a
    self-signed root, so anchors are looked for in the chain only. The path from the leaf
    to the anchor is checked by cryptography's X.509 verifier: signatures, validity of every
    certificate, basicConstraints, and the name, with the relaxed leaf profile `_EE_POLICY`.
    """
    leaf, intermediates = chain[0], chain[1:]
    matched = [(cert, r) for cert in intermediates for r in records if r.matches(cert)]
    if not matched:
        return DaneResult(
            False,
            "no certificate in the server's chain matches a DANE-TA record",
            result_type=ResultType.CERTIFICATE_NOT_TRUSTED,
        )
    builder = (
        PolicyBuilder()
        .store(Store([cert for cert, _ in matched]))
        .time(now)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_EE_POLICY)
    )
    error = ""
    for name in names:
        try:
            path = builder.build_server_verifier(DNSName(name)).verify(leaf, intermediates)
        except (VerificationError, ValueError) as exc:
            error = str(exc)
            continue
        anchor = path[-1]
        record = next(r for cert, r in matched if cert == anchor)
        return DaneResult(
            True,
            f"DANE-TA record {record} matches {anchor.subject.rfc4514_string()}, "
            f"and the chain is valid for {name}",
            record,
        )
    if leaf.not_valid_after_utc < now:
        return DaneResult(
            False,
            f"the certificate expired {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z",
            result_type=ResultType.CERTIFICATE_EXPIRED,
        )
    if leaf.not_valid_before_utc > now:
        return DaneResult(
            False, "the certificate is not yet valid", result_type=ResultType.VALIDATION_FAILURE
        )
    # Tell a wrong name from a broken chain: does the chain hold for a name it carries?
    # (A wildcard name is tried with a label in place of the "*".)
    for carried in _dns_names(leaf):
        probe = "wildcard" + carried[1:] if carried.startswith("*.") else carried
        try:
            builder.build_server_verifier(DNSName(probe)).verify(leaf, intermediates)
        except (VerificationError, ValueError):
            continue
        return DaneResult(
            False,
            f"the certificate names {', '.join(_dns_names(leaf))}, not {' or '.join(names)}",
            result_type=ResultType.CERTIFICATE_HOST_MISMATCH,
        )
    if "candidates exhausted" in error:
        # No path from the leaf to an anchor: wrong issuer, or a signature that fails.
        return DaneResult(
            False,
            "the chain does not lead to the DANE-TA trust anchor",
            result_type=ResultType.CERTIFICATE_NOT_TRUSTED,
        )
    return DaneResult(False, f"DANE-TA: {error}", result_type=ResultType.VALIDATION_FAILURE)


def _reference_names(mx_host: str, names: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for name in (mx_host, *names):
        seen.setdefault(name.rstrip(".").lower(), None)
    return tuple(seen)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name) for name in san.get_values_for_type(x509.DNSName)]


def _describe(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(spki_der(cert)).hexdigest()
    return f"subject {cert.subject.rfc4514_string()}, SPKI SHA-256 {digest}"


# --- TLSA discovery ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One DO query's outcome: records (possibly none), whether AD was set, or a failure."""

    rdatas: tuple[dns.rdata.Rdata, ...] = ()
    secure: bool = False
    canonical: str | None = None  # the name after CNAMEs
    error: str | None = None


def _dnssec_resolver(resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
    """A copy of `resolver` that asks for DNSSEC (DO) and caches nothing.

    The AD bit is what the validating resolver says about one response, and it answers with
    AD only to a query with DO or AD set (RFC 6840 5.7). The copy keeps the caller's servers
    and timeouts; it has no cache because a cached answer to a query without DO would
    carry no AD.
    """
    secure = copy.copy(resolver)
    secure.use_edns(0, dns.flags.DO, 1232)
    secure.cache = None
    return secure


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> _Answer:
    qname = dns.name.from_text(name)
    try:
        answer = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as exc:
        responses: list[dns.message.Message] = list(exc.kwargs["responses"].values())
        return _Answer(
            secure=bool(responses) and all(_ad(r) for r in responses),
            canonical=exc.canonical_name.to_text(omit_final_dot=True).lower(),
        )
    except dns.exception.DNSException as exc:
        return _Answer(error=describe_dns_error(exc))
    return _Answer(
        rdatas=tuple(answer.rrset) if answer.rrset is not None else (),
        secure=_ad(answer.response),
        canonical=answer.canonical_name.to_text(omit_final_dot=True).lower(),
    )


def _ad(response: dns.message.Message) -> bool:
    return bool(response.flags & dns.flags.AD)


async def lookup_tlsa(
    resolver: dns.asyncresolver.Resolver, mx_host: str, port: int = 25
) -> TlsaLookup:
    """The DANE TLSA outcome for `mx_host`:`port`, from a validating resolver's AD bit.

    `resolver` must reach a validating resolver over a trusted path (loopback); it is not
    changed (a copy sets DO). Never raises for DNS trouble: failures are in the result.
    """
    host = mx_host.rstrip(".").lower()
    if is_ip(host.strip("[]")):
        return TlsaLookup(mx_host, port, reason="no DANE for an address literal")
    secure_resolver = _dnssec_resolver(resolver)
    v6, v4 = await asyncio.gather(
        _query(secure_resolver, host, "AAAA"), _query(secure_resolver, host, "A")
    )
    answered = [a for a in (v6, v4) if a.error is None]
    if not answered:
        error = f"address lookup for {host} failed: AAAA {v6.error}, A {v4.error}"
        return TlsaLookup(
            mx_host, port, reason=error, error=error, result_type=ResultType.DNSSEC_INVALID
        )
    if not all(a.secure for a in answered):
        return TlsaLookup(
            mx_host, port, reason=f"no DANE: the address records of {host} are not signed"
        )
    if not any(a.rdatas for a in answered):
        return TlsaLookup(
            mx_host, port, reason=f"no DANE: {host} has no address records", secure=True
        )
    expanded = next((a.canonical for a in answered if a.canonical), host)
    # RFC 7672 2.2.3: the CNAME-expanded name first, then the name the MX record gave.
    candidates = [expanded, host] if expanded != host else [host]
    for base in candidates:
        owner = f"_{port}._tcp.{base}"
        tlsa = await _query(secure_resolver, owner, "TLSA")
        if tlsa.error is not None:
            return TlsaLookup(
                mx_host,
                port,
                reason=f"TLSA lookup for {owner} failed: {tlsa.error}",
                error=f"TLSA lookup for {owner} failed: {tlsa.error}",
                result_type=ResultType.DNSSEC_INVALID,
                base_domain=base,
            )
        if not tlsa.secure:
            return TlsaLookup(
                mx_host, port, reason=f"no DANE: the TLSA answer for {owner} is not signed"
            )
        if not tlsa.rdatas:
            continue  # a secure denial: try the next base domain
        found = _records(tlsa.rdatas)
        usable = tuple(r for r in found if r.usable)
        unusable = tuple(r for r in found if not r.usable)
        names = _reference_names(host, (base,))
        if not usable:
            return TlsaLookup(
                mx_host,
                port,
                reason=f"DANE: {owner} has {len(found)} TLSA records, none usable: "
                "TLS is mandatory but cannot be authenticated",
                secure=True,
                result_type=ResultType.TLSA_INVALID,
                unusable=unusable,
                base_domain=base,
                names=names,
            )
        return TlsaLookup(
            mx_host,
            port,
            reason=f"DANE: {len(usable)} usable TLSA records at {owner}",
            records=usable,
            secure=True,
            unusable=unusable,
            base_domain=base,
            names=names,
        )
    return TlsaLookup(
        mx_host,
        port,
        reason=f"no DANE: no TLSA records for {host} (a DNSSEC-validated denial)",
        secure=True,
    )


def _records(rdatas: Iterable[dns.rdata.Rdata]) -> tuple[TlsaRecord, ...]:
    return tuple(
        TlsaRecord(rdata.usage, rdata.selector, rdata.mtype, rdata.cert)
        for rdata in rdatas
        if isinstance(rdata, dns.rdtypes.ANY.TLSA.TLSA)
    )
