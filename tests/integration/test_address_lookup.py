"""The one address lookup every DNS client shares (routing, MTA-STS fetch, TLS-RPT POST)."""

from __future__ import annotations

import dns.asyncresolver

from relaymail.config import DnsSettings, HostPort
from relaymail.resolver import AddressLookup, lookup_addresses
from relaymail.routing import make_resolver
from tests.peers.dns_server import AAAA, A, DNSServer, NXDomain, ServFail


def resolver_for(server: DNSServer) -> dns.asyncresolver.Resolver:
    servers = (HostPort(server.host, server.port),)
    return make_resolver(DnsSettings(nameservers=servers, timeout=3.0))


async def test_ipv6_addresses_come_first_then_ipv4(dns_server):
    dns = dns_server([
        AAAA("both.test", "::1"), A("both.test", "127.0.0.1"), A("v4.test", "127.0.0.2"),
    ])  # fmt: skip
    resolver = resolver_for(dns)
    assert await lookup_addresses(resolver, "both.test") == AddressLookup(("::1", "127.0.0.1"))
    assert await lookup_addresses(resolver, "v4.test") == AddressLookup(("127.0.0.2",))


async def test_a_name_without_addresses_says_so(dns_server):
    resolver = resolver_for(dns_server([NXDomain("gone.test")]))
    found = await lookup_addresses(resolver, "gone.test")
    assert found.addresses == () and found.error == "gone.test has no address records"


async def test_a_failing_lookup_reports_the_failure_not_missing_records(dns_server):
    dns = dns_server([ServFail("broken.test")])
    found = await lookup_addresses(resolver_for(dns), "broken.test")
    assert found.addresses == ()
    assert found.error is not None
    assert found.error.startswith("AAAA lookup for broken.test failed")
    assert "no address records" not in found.error
