"""DANE chain checks (RFC 7672 section 3) against real trustme chains.

The expected TLSA data is computed here the long way, from cryptography's own encodings
(`public_bytes`) and hashlib, independently of the module's SPKI extraction.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from relaymail.tls.dane import (
    DaneStatus,
    TlsaLookup,
    TlsaRecord,
    spki_der,
    verify_chain,
)
from relaymail.tls.reporting import ResultType

NOW = dt.datetime.now(dt.UTC)
MX = "mx.dane.test"


def certs(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    """The chain as a server sends it: leaf, then intermediates."""
    return [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]


def ca_cert(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


@functools.cache
def root() -> trustme.CA:
    return trustme.CA(organization_name="relaymail DANE test root")


@functools.cache
def intermediate() -> trustme.CA:
    return root().create_child_ca()


@functools.cache
def leaf_from_intermediate() -> list[x509.Certificate]:
    """mx.dane.test <- intermediate <- root, sent with the root (as RFC 7672 3.1.2 asks)."""
    return [*certs(intermediate().issue_cert(MX)), ca_cert(root())]


@functools.cache
def leaf_from_root() -> list[x509.Certificate]:
    return certs(root().issue_cert(MX))


def selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(Encoding.DER)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def record(usage: int, selector: int, matching: int, cert: x509.Certificate) -> TlsaRecord:
    data = selected(cert, selector)
    if matching == 1:
        data = hashlib.sha256(data).digest()
    elif matching == 2:
        data = hashlib.sha512(data).digest()
    return TlsaRecord(usage, selector, matching, data)


COMBINATIONS = [(selector, matching) for selector in (0, 1) for matching in (0, 1, 2)]


# --- DANE-EE(3) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "matching"), COMBINATIONS)
def test_dane_ee_record_matches_the_leaf(selector: int, matching: int) -> None:
    chain = leaf_from_root()
    tlsa = record(3, selector, matching, chain[0])
    result = verify_chain([tlsa], chain, MX, now=NOW)
    assert result.verified, result.reason
    assert result.record == tlsa
    assert result.result_type is None


@pytest.mark.parametrize(("selector", "matching"), COMBINATIONS)
def test_dane_ee_record_for_another_certificate_does_not_match(
    selector: int, matching: int
) -> None:
    other = certs(root().issue_cert("other.dane.test"))[0]
    result = verify_chain([record(3, selector, matching, other)], leaf_from_root(), MX, now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-not-trusted"
    assert "no DANE-EE record matches" in result.reason


def test_dane_ee_one_flipped_bit_in_the_digest_does_not_match() -> None:
    chain = leaf_from_root()
    good = record(3, 1, 1, chain[0])
    bad = TlsaRecord(3, 1, 1, good.data[:-1] + bytes([good.data[-1] ^ 1]))
    assert not verify_chain([bad], chain, MX, now=NOW).verified


def test_dane_ee_ignores_name_expiry_and_issuer() -> None:
    # RFC 7672 3.1.1: the pinned key is the identity; a self-made, expired certificate for
    # another name from an unknown CA is fine.
    long_ago = NOW - dt.timedelta(days=400)
    stale = certs(
        trustme.CA().issue_cert(
            "elsewhere.example", not_before=long_ago, not_after=NOW - dt.timedelta(days=30)
        )
    )
    result = verify_chain([record(3, 1, 1, stale[0])], stale, MX, now=NOW)
    assert result.verified, result.reason


def test_dane_ee_pins_the_leaf_only() -> None:
    # A DANE-EE record that matches the intermediate authenticates nothing.
    chain = leaf_from_intermediate()
    result = verify_chain([record(3, 1, 1, chain[1])], chain, MX, now=NOW)
    assert not result.verified


def test_a_matching_record_wins_among_several() -> None:
    chain = leaf_from_root()
    other = certs(root().issue_cert("other.dane.test"))[0]
    records = [record(3, 1, 1, other), record(3, 0, 2, chain[0])]
    result = verify_chain(records, chain, MX, now=NOW)
    assert result.verified
    assert result.record == records[1]


# --- DANE-TA(2) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "matching"), COMBINATIONS)
def test_dane_ta_record_for_the_intermediate_authenticates_the_leaf(
    selector: int, matching: int
) -> None:
    chain = leaf_from_intermediate()
    tlsa = record(2, selector, matching, chain[1])
    result = verify_chain([tlsa], chain, MX, now=NOW)
    assert result.verified, result.reason
    assert result.record == tlsa
    assert chain[1].subject.rfc4514_string() in result.reason


@pytest.mark.parametrize(("selector", "matching"), COMBINATIONS)
def test_dane_ta_record_for_the_root_authenticates_through_the_intermediate(
    selector: int, matching: int
) -> None:
    chain = leaf_from_intermediate()
    tlsa = record(2, selector, matching, chain[2])
    result = verify_chain([tlsa], chain, MX, now=NOW)
    assert result.verified, result.reason
    assert result.record == tlsa


def test_dane_ta_anchor_must_be_in_the_chain_the_server_sent() -> None:
    # RFC 7672 3.1.2: servers must send the trust anchor, even a self-signed root.
    chain = leaf_from_intermediate()[:2]
    result = verify_chain([record(2, 0, 1, ca_cert(root()))], chain, MX, now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-not-trusted"
    assert "no certificate in the server's chain matches a DANE-TA record" in result.reason


def test_dane_ta_record_matching_the_leaf_is_not_an_anchor() -> None:
    chain = leaf_from_root()
    result = verify_chain([record(2, 1, 1, chain[0])], chain, MX, now=NOW)
    assert not result.verified


def test_dane_ta_checks_the_name() -> None:
    chain = leaf_from_intermediate()
    result = verify_chain([record(2, 1, 1, chain[1])], chain, "mx2.dane.test", now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-host-mismatch"
    assert MX in result.reason and "mx2.dane.test" in result.reason


def test_dane_ta_accepts_the_tlsa_base_domain_as_reference_name() -> None:
    # RFC 7672 3.2.2: the CNAME-expanded TLSA base domain is a reference identifier too.
    chain = leaf_from_intermediate()
    result = verify_chain(
        [record(2, 1, 1, chain[1])], chain, "alias.dane.test", now=NOW, names=(MX,)
    )
    assert result.verified, result.reason
    assert f"valid for {MX}" in result.reason


def test_dane_ta_accepts_a_wildcard_certificate() -> None:
    chain = [*certs(intermediate().issue_cert("*.dane.test")), ca_cert(root())]
    assert verify_chain([record(2, 1, 1, chain[1])], chain, MX, now=NOW).verified
    deeper = verify_chain([record(2, 1, 1, chain[1])], chain, "a.mx.dane.test", now=NOW)
    assert not deeper.verified
    assert deeper.result_type == "certificate-host-mismatch"


def test_dane_ta_checks_expiry() -> None:
    leaf = intermediate().issue_cert(
        MX, not_before=NOW - dt.timedelta(days=90), not_after=NOW - dt.timedelta(days=1)
    )
    chain = certs(leaf)
    result = verify_chain([record(2, 1, 1, chain[1])], chain, MX, now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-expired"


def test_dane_ta_anchor_that_did_not_issue_the_chain_fails() -> None:
    # The server sends an unrelated CA certificate that the record names.
    stranger = trustme.CA()
    chain = [*leaf_from_intermediate()[:2], ca_cert(stranger)]
    result = verify_chain([record(2, 1, 1, ca_cert(stranger))], chain, MX, now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-not-trusted"
    assert "does not lead to the DANE-TA trust anchor" in result.reason


def test_dane_ta_checks_signatures_not_just_issuer_names() -> None:
    # Two leaves whose issuer name is the anchor's: one signed by the anchor's key, one by
    # some other key. The issuer-subject link holds for both; only one signature does.
    anchor = leaf_from_intermediate()[1]
    anchor_key = load_pem_private_key(intermediate().private_key_pem.bytes(), None)
    assert isinstance(anchor_key, ec.EllipticCurvePrivateKey)
    genuine = leaf_signed_by(anchor, anchor_key)
    forged = leaf_signed_by(anchor, ec.generate_private_key(ec.SECP256R1()))
    tlsa = [record(2, 1, 1, anchor)]
    assert verify_chain(tlsa, [genuine, anchor], MX, now=NOW).verified
    result = verify_chain(tlsa, [forged, anchor], MX, now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-not-trusted"


def leaf_signed_by(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, MX)]))
        .issuer_name(issuer.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(MX)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_dane_ee_and_dane_ta_together_either_one_suffices() -> None:
    chain = leaf_from_intermediate()
    other = certs(root().issue_cert("other.dane.test"))[0]
    result = verify_chain([record(3, 1, 1, other), record(2, 0, 1, chain[1])], chain, MX, now=NOW)
    assert result.verified
    assert result.record is not None and result.record.usage == 2


# --- records that do not count ------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "selector", "matching", "length"),
    [
        (0, 1, 1, 32),  # PKIX-TA: not for SMTP (RFC 7672 3.1.3)
        (1, 1, 1, 32),  # PKIX-EE: not for SMTP
        (4, 1, 1, 32),  # undefined usage
        (3, 2, 1, 32),  # undefined selector
        (3, 1, 3, 32),  # undefined matching type
        (3, 1, 1, 31),  # SHA-256 digest of the wrong length
        (3, 1, 2, 32),  # SHA-512 digest of the wrong length
        (3, 0, 0, 0),  # nothing to match
    ],
)
def test_unusable_records(usage: int, selector: int, matching: int, length: int) -> None:
    assert not TlsaRecord(usage, selector, matching, bytes(length)).usable


def test_pkix_ee_record_is_ignored_even_when_it_matches() -> None:
    chain = leaf_from_root()
    result = verify_chain([record(1, 1, 1, chain[0])], chain, MX, now=NOW)
    assert not result.verified
    assert result.result_type == "tlsa-invalid"


def test_no_certificate_is_a_validation_failure() -> None:
    result = verify_chain([record(3, 1, 1, leaf_from_root()[0])], [], MX, now=NOW)
    assert not result.verified
    assert result.result_type == "validation-failure"


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_spki_is_taken_from_the_certificate_as_encoded(key_type: trustme.KeyType) -> None:
    cert = certs(trustme.CA(key_type=key_type).issue_cert(MX, key_type=key_type))[0]
    assert spki_der(cert) == selected(cert, 1)


def test_record_text_is_the_zone_file_form() -> None:
    assert str(TlsaRecord(3, 1, 1, bytes.fromhex("ab" * 32))) == "3 1 1 abababababababab…"
    assert str(TlsaRecord(2, 0, 1, bytes.fromhex("0102"))) == "2 0 1 0102"


# --- what a lookup means for delivery -----------------------------------------------------


def test_lookup_status_follows_rfc_7672() -> None:
    usable = record(3, 1, 1, leaf_from_root()[0])
    pkix = TlsaRecord(1, 1, 1, usable.data)
    assert TlsaLookup(MX, 25, "x", records=(usable,), secure=True).status is (
        DaneStatus.AUTHENTICATE
    )
    assert TlsaLookup(MX, 25, "x", secure=True, unusable=(pkix,)).status is DaneStatus.ENCRYPT
    assert TlsaLookup(MX, 25, "x", secure=True).status is DaneStatus.NONE
    assert TlsaLookup(MX, 25, "x").status is DaneStatus.NONE
    failed = TlsaLookup(MX, 25, "x", error="SERVFAIL", result_type=ResultType.DNSSEC_INVALID)
    assert failed.status is DaneStatus.UNUSABLE


def test_lookup_verify_uses_its_reference_names() -> None:
    chain = leaf_from_intermediate()
    lookup = TlsaLookup(
        "alias.dane.test",
        25,
        "x",
        records=(record(2, 1, 1, chain[1]),),
        secure=True,
        names=("alias.dane.test", MX),
    )
    assert lookup.verify(chain, now=NOW).verified
