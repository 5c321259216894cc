"""RFC 6125 name matching for `verify` (tls/verify.py), on trustme certificates."""

from __future__ import annotations

import pytest
import trustme
from cryptography import x509

from relaymail.tls.verify import matches_reference


def leaf(*names: str) -> x509.Certificate:
    pem = trustme.CA().issue_cert(*names).cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("mx.example.test", True),
        ("MX.Example.Test.", True),
        ("a.mx.example.test", False),  # a wildcard covers one label
        ("example.test", False),
        ("127.0.0.1", True),
        ("::1", False),
    ],
)
def test_wildcard_and_ip_identifiers(reference: str, expected: bool) -> None:
    assert matches_reference(leaf("*.example.test", "127.0.0.1"), reference) is expected


def test_a_wildcard_directly_under_a_top_level_domain_matches_nothing() -> None:
    assert not matches_reference(leaf("*.test"), "example.test")
