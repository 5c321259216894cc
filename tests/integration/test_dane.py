"""DANE TLSA lookups through a real validating resolver, and checks against real handshakes.

Every zone here is signed by ldns and validated by unbound from a root trust anchor
(tests/peers/dnssec_zone.py); relaymail only reads the AD bit. The TLSA data comes from the
certificates the loopback SMTP peer really presents.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import aiosmtplib
import dns.asyncquery
import dns.asyncresolver
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relaymail.config import Config, parse_config
from relaymail.delivery import AttemptResult, DeliveryEngine, RecipientResult, Status
from relaymail.message import Envelope
from relaymail.tls.context import client_context, peer_chain
from relaymail.tls.dane import DaneStatus, TlsaRecord, lookup_tlsa, verify_chain
from relaymail.tls.reporting import TlsReportStore, preview_reports
from tests.integration.conftest import MESSAGE
from tests.peers.dns_server import AAAA, CNAME, MX, TLSA, A, DNSServerFactory, Record
from tests.peers.dnssec_zone import DNSSECResolver, Security, Zone
from tests.peers.smtp_server import DEFAULT_CAPABILITIES, Script, SMTPPeerFactory

NOW = dt.datetime.now(dt.UTC)


class DNSSECResolverFactory(Protocol):
    def __call__(self, zones: Iterable[Zone]) -> DNSSECResolver: ...


@pytest.fixture
def dnssec_resolver(tmp_path: Path) -> Iterator[DNSSECResolverFactory]:
    """`dnssec_resolver([Zone(...)])` starts a validating unbound over those signed zones."""
    servers: list[DNSSECResolver] = []

    def start(zones: Iterable[Zone]) -> DNSSECResolver:
        server = DNSSECResolver(zones, workdir=tmp_path / f"dnssec-{len(servers)}")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def dane_ca() -> trustme.CA:
    return trustme.CA(organization_name="relaymail DANE-TA test root")


@pytest.fixture(scope="module")
def issuer(dane_ca: trustme.CA) -> trustme.CA:
    return dane_ca.create_child_ca()


@pytest.fixture(scope="module")
def server_leaf(issuer: trustme.CA) -> trustme.LeafCert:
    return issuer.issue_cert("mx.dane.test", "mx.other.test")


def pem_chain(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]


def spki_sha256(cert: x509.Certificate) -> bytes:
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def dane_ee(name: str, cert: x509.Certificate) -> TLSA:
    return TLSA(name, 3, 1, 1, spki_sha256(cert))


def signed(
    origin: str,
    *records: Record,
    security: Security = Security.SIGNED,
    forged: tuple[str, ...] = (),
) -> Zone:
    return Zone(origin, records, security, forged)


async def query(server: DNSSECResolver, name: str, rdtype: str) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype, want_dnssec=True)
    return await dns.asyncquery.udp(request, server.host, port=server.port, timeout=3)


# --- the fixture itself: is this really DNSSEC? -------------------------------------------


async def test_fixture_signed_answers_carry_ad_and_signatures(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                dane_ee("_25._tcp.mx.dane.test.", leaf),
            ),
            signed("plain.test.", A("mx.plain.test.", "127.0.0.1"), security=Security.UNSIGNED),
        ]
    )
    secure = await query(server, "_25._tcp.mx.dane.test.", "TLSA")
    assert secure.rcode() == dns.rcode.NOERROR
    assert secure.flags & dns.flags.AD
    assert {rrset.rdtype for rrset in secure.answer} == {
        dns.rdatatype.TLSA,
        dns.rdatatype.RRSIG,
    }
    insecure = await query(server, "mx.plain.test.", "A")
    assert insecure.rcode() == dns.rcode.NOERROR and insecure.answer
    assert not insecure.flags & dns.flags.AD
    denial = await query(server, "nothing.dane.test.", "A")
    assert denial.rcode() == dns.rcode.NXDOMAIN
    assert denial.flags & dns.flags.AD
    assert server.trust_anchor.startswith(". IN DS ")


async def test_fixture_forged_and_expired_answers_are_bogus(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "forged.test.",
                A("mx.forged.test.", "127.0.0.1"),
                dane_ee("_25._tcp.mx.forged.test.", leaf),
                forged=("_25._tcp.mx.forged.test.",),
            ),
            signed("expired.test.", A("mx.expired.test.", "127.0.0.1"), security=Security.EXPIRED),
        ]
    )
    untouched = await query(server, "mx.forged.test.", "A")
    assert untouched.flags & dns.flags.AD
    forged = await query(server, "_25._tcp.mx.forged.test.", "TLSA")
    assert forged.rcode() == dns.rcode.SERVFAIL
    assert [e.code for e in forged.extended_errors()] == [dns.edns.EDECode.DNSSEC_BOGUS]
    expired = await query(server, "mx.expired.test.", "A")
    assert expired.rcode() == dns.rcode.SERVFAIL
    assert [e.code for e in expired.extended_errors()] == [dns.edns.EDECode.SIGNATURE_EXPIRED]
    assert "signature crypto failed" in server.log
    assert "signature expired" in server.log


# --- lookup_tlsa ----------------------------------------------------------------------------


async def test_secure_tlsa_records_require_authenticated_tls(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    chain = pem_chain(server_leaf)
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                MX("dane.test.", 10, "mx.dane.test."),
                A("mx.dane.test.", "127.0.0.1"),
                AAAA("mx.dane.test.", "::1"),
                dane_ee("_25._tcp.mx.dane.test.", chain[0]),
                TLSA(
                    "_25._tcp.mx.dane.test.",
                    2,
                    0,
                    1,
                    hashlib.sha256(chain[1].public_bytes(Encoding.DER)).digest(),
                ),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.AUTHENTICATE, lookup.reason
    assert lookup.secure and lookup.error is None
    assert set(lookup.records) == {
        TlsaRecord(3, 1, 1, spki_sha256(chain[0])),
        TlsaRecord(2, 0, 1, hashlib.sha256(chain[1].public_bytes(Encoding.DER)).digest()),
    }
    assert lookup.base_domain == "mx.dane.test"
    assert lookup.names == ("mx.dane.test",)
    result = lookup.verify(chain, now=NOW)
    assert result.verified, result.reason


async def test_tlsa_for_another_port(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                dane_ee("_2525._tcp.mx.dane.test.", leaf),
            )
        ]
    )
    assert (await lookup_tlsa(server.resolver(), "mx.dane.test", 2525)).records
    assert (await lookup_tlsa(server.resolver(), "mx.dane.test")).status is DaneStatus.NONE


async def test_unsigned_zone_means_no_dane(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    # The TLSA record is there, but nothing proves it is genuine: RFC 7672 2.1.1 "insecure".
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "plain.test.",
                A("mx.plain.test.", "127.0.0.1"),
                dane_ee("_25._tcp.mx.plain.test.", leaf),
                security=Security.UNSIGNED,
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.plain.test")
    assert lookup.status is DaneStatus.NONE
    assert not lookup.secure and not lookup.records and lookup.error is None
    assert "not signed" in lookup.reason


async def test_secure_denial_of_tlsa_means_no_dane(
    dnssec_resolver: DNSSECResolverFactory,
) -> None:
    server = dnssec_resolver([signed("dane.test.", A("mx.dane.test.", "127.0.0.1"))])
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.NONE
    assert lookup.secure and lookup.error is None
    assert "DNSSEC-validated denial" in lookup.reason


async def test_forged_tlsa_record_makes_the_mx_host_unusable(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                dane_ee("_25._tcp.mx.dane.test.", leaf),
                forged=("_25._tcp.mx.dane.test.",),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.UNUSABLE
    assert lookup.result_type == "dnssec-invalid"
    assert lookup.error is not None and "SERVFAIL" in lookup.error
    assert "DNSSEC Bogus" in lookup.error  # the resolver's Extended DNS Error
    assert not lookup.records


async def test_expired_signatures_make_the_mx_host_unusable(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                dane_ee("_25._tcp.mx.dane.test.", leaf),
                security=Security.EXPIRED,
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.UNUSABLE
    assert lookup.result_type == "dnssec-invalid"
    assert lookup.error is not None and "Signature Expired" in lookup.error


async def test_lame_zone_makes_the_mx_host_unusable(
    dnssec_resolver: DNSSECResolverFactory,
) -> None:
    server = dnssec_resolver([Zone("lame.test.", security=Security.LAME)])
    lookup = await lookup_tlsa(server.resolver(), "mx.lame.test")
    assert lookup.status is DaneStatus.UNUSABLE
    assert lookup.error is not None and "address lookup" in lookup.error


async def test_only_pkix_usages_mean_tls_without_authentication(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    # RFC 7672 3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP; a secure RRset with
    # nothing usable still makes TLS mandatory.
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                TLSA("_25._tcp.mx.dane.test.", 1, 1, 1, spki_sha256(leaf)),
                TLSA("_25._tcp.mx.dane.test.", 0, 1, 1, spki_sha256(leaf)),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.ENCRYPT
    assert lookup.result_type == "tlsa-invalid"
    assert not lookup.records
    assert {r.usage for r in lookup.unusable} == {0, 1}


async def test_usable_records_are_kept_beside_unusable_ones(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                TLSA("_25._tcp.mx.dane.test.", 1, 1, 1, spki_sha256(leaf)),
                dane_ee("_25._tcp.mx.dane.test.", leaf),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.AUTHENTICATE
    assert [r.usage for r in lookup.records] == [3]
    assert [r.usage for r in lookup.unusable] == [1]


async def test_insecure_address_records_mean_no_dane_even_with_secure_tlsa(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    # RFC 7672 2.2.3: the MX host's name leads (CNAME) to addresses nobody signed, so the
    # TLSA records, though secure, are not used.
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                CNAME("mx.dane.test.", "host.plain.test."),
                dane_ee("_25._tcp.mx.dane.test.", leaf),
            ),
            signed("plain.test.", A("host.plain.test.", "127.0.0.1"), security=Security.UNSIGNED),
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.NONE
    assert "address records" in lookup.reason


async def test_cname_expanded_name_is_the_first_tlsa_base_domain(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    chain = pem_chain(server_leaf)
    server = dnssec_resolver(
        [
            signed("dane.test.", CNAME("mx.dane.test.", "mx.other.test.")),
            signed(
                "other.test.",
                A("mx.other.test.", "127.0.0.1"),
                TLSA("_25._tcp.mx.other.test.", 2, 1, 1, spki_sha256(chain[1])),
            ),
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.AUTHENTICATE
    assert lookup.base_domain == "mx.other.test"
    assert lookup.names == ("mx.dane.test", "mx.other.test")
    assert lookup.verify(chain, now=NOW).verified


async def test_original_name_is_the_second_tlsa_base_domain(
    dnssec_resolver: DNSSECResolverFactory, server_leaf: trustme.LeafCert
) -> None:
    leaf = pem_chain(server_leaf)[0]
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                CNAME("mx.dane.test.", "mx.other.test."),
                dane_ee("_25._tcp.mx.dane.test.", leaf),
            ),
            signed("other.test.", A("mx.other.test.", "127.0.0.1")),
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test.")
    assert lookup.status is DaneStatus.AUTHENTICATE
    assert lookup.base_domain == "mx.dane.test"


async def test_malformed_tlsa_record_fails_closed(
    dnssec_resolver: DNSSECResolverFactory,
) -> None:
    # A SHA-256 "digest" of 3 bytes. RFC 7672 would ignore just that record, but dnspython
    # (2.9) refuses the whole response, so the lookup fails: the host is unusable, never
    # downgraded to no DANE.
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                TLSA("_25._tcp.mx.dane.test.", 3, 1, 1, b"\x01\x02\x03"),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(lifetime=0.5), "mx.dane.test")
    assert lookup.status is DaneStatus.UNUSABLE


async def test_address_literal_has_no_dane(dnssec_resolver: DNSSECResolverFactory) -> None:
    server = dnssec_resolver([])
    for literal in ("127.0.0.1", "[::1]"):
        assert (await lookup_tlsa(server.resolver(), literal)).status is DaneStatus.NONE


async def test_lookup_leaves_the_callers_resolver_alone(
    dnssec_resolver: DNSSECResolverFactory,
) -> None:
    server = dnssec_resolver([signed("dane.test.", A("mx.dane.test.", "127.0.0.1"))])
    resolver: dns.asyncresolver.Resolver = server.resolver()
    before = (resolver.edns, resolver.ednsflags, resolver.flags, resolver.cache)
    await lookup_tlsa(resolver, "mx.dane.test")
    assert (resolver.edns, resolver.ednsflags, resolver.flags, resolver.cache) == before


async def test_non_validating_resolver_never_yields_dane(
    dns_server: DNSServerFactory, server_leaf: trustme.LeafCert
) -> None:
    # The plain test resolver (no DNSSEC at all) serves the same TLSA record: without AD it
    # must count for nothing.
    leaf = pem_chain(server_leaf)[0]
    server = dns_server([A("mx.dane.test.", "127.0.0.1"), dane_ee("_25._tcp.mx.dane.test.", leaf)])
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.NONE


# --- against a real handshake -----------------------------------------------------------------


def server_context_with_chain(
    leaf: trustme.LeafCert, extra: list[x509.Certificate], tmp_path: Path
) -> ssl.SSLContext:
    """A server context sending `leaf`'s chain plus `extra` (say the root, for DANE-TA)."""
    certfile = tmp_path / "chain.pem"
    keyfile = tmp_path / "key.pem"
    certfile.write_bytes(
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        + b"".join(cert.public_bytes(Encoding.PEM) for cert in extra)
    )
    keyfile.write_bytes(leaf.private_key_pem.bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


async def handshake_chain(host: str, port: int) -> list[x509.Certificate]:
    """STARTTLS with relaymail's own client context; the chain the server really sent."""
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=5)
    await client.connect()
    try:
        await client.ehlo()
        await client.starttls(tls_context=client_context())
        assert client.transport is not None
        ssl_object = client.transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        return peer_chain(ssl_object)
    finally:
        await client.quit()


@pytest.mark.parametrize("usage", [2, 3])
async def test_tlsa_from_dnssec_authenticates_a_real_starttls_handshake(
    usage: int,
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    dane_ca: trustme.CA,
    tmp_path: Path,
) -> None:
    root = x509.load_pem_x509_certificate(dane_ca.cert_pem.bytes())
    peer = await smtp_peer(
        Script(ssl_context=server_context_with_chain(server_leaf, [root], tmp_path))
    )
    pinned = pem_chain(server_leaf)[0] if usage == 3 else root
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                TLSA("_25._tcp.mx.dane.test.", usage, 1, 1, spki_sha256(pinned)),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    assert lookup.status is DaneStatus.AUTHENTICATE
    chain = await handshake_chain(peer.host, peer.port)
    assert len(chain) == 3  # leaf, intermediate, root: as the server sent them
    result = lookup.verify(chain, now=NOW)
    assert result.verified, result.reason
    assert result.record == lookup.records[0]


async def test_tlsa_for_another_key_rejects_a_real_handshake(
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    # The certificate the peer presents chains to the test CA, but DNS pins another key,
    # as when a man in the middle presents his own certificate.
    impostor = trustme.CA().issue_cert("mx.dane.test")
    peer = await smtp_peer(Script(ssl_context=server_context_with_chain(impostor, [], tmp_path)))
    server = dnssec_resolver(
        [
            signed(
                "dane.test.",
                A("mx.dane.test.", "127.0.0.1"),
                dane_ee("_25._tcp.mx.dane.test.", pem_chain(server_leaf)[0]),
            )
        ]
    )
    lookup = await lookup_tlsa(server.resolver(), "mx.dane.test")
    chain = await handshake_chain(peer.host, peer.port)
    result = verify_chain(lookup.records, chain, "mx.dane.test", now=NOW)
    assert not result.verified
    assert result.result_type == "certificate-not-trusted"


# --- in delivery: DANE decides the host, before MTA-STS and whatever tempfail_fallback says ---


def dane_config(server: DNSSECResolver, port: int, tmp_path: Path) -> Config:
    return parse_config(
        {
            "delivery": {"helo_name": "client.relaymail.test", "port": port,
                         "command_timeout": 3.0},
            "tls": {"dane": True, "tempfail_fallback": True},
            "dns": {"nameservers": [f"{server.host}:{server.port}"], "timeout": 3.0},
            "queue": {"directory": str(tmp_path / "state")},
        }
    )  # fmt: skip


async def deliver_to(config: Config) -> RecipientResult:
    engine = DeliveryEngine(config)
    try:
        [result] = await engine.deliver(Envelope("a@src.test", ("u@dane.test",)), MESSAGE)
    finally:
        await engine.close()
    return result


def dane_zone(leaf: x509.Certificate, port: int, *, forged: bool = False) -> Zone:
    # The TLSA owner names the port delivery connects to (RFC 7672 2.2.3): the peer's.
    owner = f"_{port}._tcp.mx.dane.test."
    return signed(
        "dane.test.",
        MX("dane.test.", 10, "mx.dane.test."),
        A("mx.dane.test.", "127.0.0.1"),
        dane_ee(owner, leaf),
        forged=(owner,) if forged else (),
    )


async def test_delivery_authenticates_by_tlsa_not_by_web_pki(
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    # The certificate chains to a CA nobody trusts: only the DNSSEC-signed TLSA vouches for it.
    peer = await smtp_peer(Script(ssl_context=server_context_with_chain(server_leaf, [], tmp_path)))
    server = dnssec_resolver([dane_zone(pem_chain(server_leaf)[0], peer.port)])
    result = await deliver_to(dane_config(server, peer.port, tmp_path))
    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used and result.tls.verified
    assert peer.transactions[0].tls


async def test_delivery_refuses_an_impostor_and_never_goes_clear(
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    impostor = trustme.CA().issue_cert("mx.dane.test")
    peer = await smtp_peer(Script(ssl_context=server_context_with_chain(impostor, [], tmp_path)))
    server = dnssec_resolver([dane_zone(pem_chain(server_leaf)[0], peer.port)])
    result = await deliver_to(dane_config(server, peer.port, tmp_path))
    assert result.status is Status.DEFERRED
    assert "certificate-not-trusted" in result.reason
    assert not peer.transactions
    # The impostor's session ends with QUIT over TLS (RFC 5321 4.1.1.10), not a lost connection.
    assert peer.sessions[0].quit and peer.transcript[-1].tls

    # A 4xx to STARTTLS does not open the cleartext door either (RFC 7672 2.2).
    peer.script = Script(starttls="454 4.7.0 TLS not available")
    result = await deliver_to(dane_config(server, peer.port, tmp_path))
    assert result.status is Status.DEFERRED
    assert "policy dane never sends mail in clear" in result.reason
    assert not [line for line in peer.transcript if line.verb in ("MAIL", "RCPT")]


async def test_bogus_tlsa_makes_the_host_unusable_and_is_reported(
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    peer = await smtp_peer(Script())
    server = dnssec_resolver([dane_zone(pem_chain(server_leaf)[0], peer.port, forged=True)])
    result = await deliver_to(dane_config(server, peer.port, tmp_path))
    assert result.status is Status.DEFERRED
    assert result.attempts[0].result == AttemptResult.DANE_UNUSABLE
    assert peer.connections == 0
    store = TlsReportStore(tmp_path / "state")
    try:
        [report] = preview_reports(store, domain="dane.test", organization_name="t",
                                   contact_info="postmaster@t.test")  # fmt: skip
    finally:
        store.close()
    [failure] = report["policies"][0]["failure-details"]
    assert failure["result-type"] == "dnssec-invalid"


async def test_an_unsigned_zone_gets_no_dane(
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    zone = signed(
        "dane.test.",
        MX("dane.test.", 10, "mx.dane.test."),
        A("mx.dane.test.", "127.0.0.1"),
        dane_ee(f"_{peer.port}._tcp.mx.dane.test.", pem_chain(server_leaf)[0]),
        security=Security.UNSIGNED,
    )
    server = dnssec_resolver([zone])
    result = await deliver_to(dane_config(server, peer.port, tmp_path))
    # Without DNSSEC the TLSA record proves nothing: plain `may`, and the seed's fallback.
    assert result.status is Status.DELIVERED and not result.tls.used


async def test_dane_authenticates_the_host_for_a_requiretls_message(
    dnssec_resolver: DNSSECResolverFactory,
    smtp_peer: SMTPPeerFactory,
    server_leaf: trustme.LeafCert,
    tmp_path: Path,
) -> None:
    # A CA nobody trusts: the DNSSEC-signed TLSA records alone authenticate the MX (RFC 8689
    # 4.2.1 takes RFC 7672's authentication as it takes RFC 6125's).
    context = server_context_with_chain(server_leaf, [], tmp_path)
    peer = await smtp_peer(
        Script(ssl_context=context, ehlo_after_tls=(*DEFAULT_CAPABILITIES, "REQUIRETLS"))
    )
    server = dnssec_resolver([dane_zone(pem_chain(server_leaf)[0], peer.port)])
    engine = DeliveryEngine(dane_config(server, peer.port, tmp_path))
    try:
        [result] = await engine.deliver(
            Envelope("a@src.test", ("u@dane.test",), requiretls=True), MESSAGE
        )
    finally:
        await engine.close()
    assert result.status is Status.DELIVERED, result.reason
    assert (result.policy or "").startswith("dane(DANE") and "REQUIRETLS" in (result.policy or "")
    [mail] = [line for line in peer.transcript if line.verb == "MAIL"]
    assert mail.tls and mail.text.endswith(" REQUIRETLS")
