"""Next hops from real DNS: unbound on loopback serving the test zones."""

from __future__ import annotations

import dataclasses
import socket

from relaymail.config import parse_config
from relaymail.delivery import AttemptResult, Status
from relaymail.routing import HopSource, Router, make_resolver
from tests.integration.conftest import deliver
from tests.peers.dns_server import AAAA, CNAME, MX, A, NXDomain, ServFail
from tests.peers.smtp_server import Script


def mx_config(dns, port: int, ca_file, level: str = "may", **dns_settings):
    return parse_config(
        {
            "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0,
                         "port": port},
            "tls": {"ca_file": str(ca_file), "policy": {"dest.test": level}},
            "queue": {"directory": str(ca_file.parent / "state")},
            "dns": {"nameservers": [f"{dns.host}:{dns.port}"], "timeout": 3.0, **dns_settings},
        }
    )  # fmt: skip


async def test_mx_preference_order_and_verify_against_the_mx_name(smtp_peer, dns_server, ca_file):
    backup = await smtp_peer(Script())
    primary = await smtp_peer(Script(greeting="554 5.3.2 down for maintenance"), host="::1",
                              port=backup.port)  # fmt: skip
    dns = dns_server([
        MX("dest.test", 10, "mx1.dest.test"),
        MX("dest.test", 20, "mx.example.test"),
        AAAA("mx1.dest.test", "::1"),
        A("mx.example.test", "127.0.0.1"),
    ])  # fmt: skip
    [result] = await deliver(mx_config(dns, backup.port, ca_file, level="verify"))
    assert result.status is Status.DELIVERED, result.reason
    assert [a.host for a in result.attempts] == [
        f"mx1.dest.test:{backup.port}",
        f"mx.example.test:{backup.port}",
    ]
    assert result.attempts[0].result == AttemptResult.GREETING_REFUSED
    assert result.tls.verified  # the certificate names mx.example.test
    assert primary.connections == 1 and backup.transactions


async def test_verify_checks_the_mx_name_not_the_address(smtp_peer, dns_server, ca_file):
    peer = await smtp_peer(Script())
    dns = dns_server([MX("dest.test", 10, "mail.dest.test"), A("mail.dest.test", "127.0.0.1")])
    [result] = await deliver(mx_config(dns, peer.port, ca_file, level="verify"))
    # The certificate covers 127.0.0.1 but not mail.dest.test.
    assert result.status is Status.DEFERRED
    assert "certificate-host-mismatch" in result.reason
    assert not peer.transactions


async def test_equal_preferences_are_tried_in_random_order(dns_server):
    dns = dns_server([
        MX("dest.test", 10, "a.dest.test"), MX("dest.test", 10, "b.dest.test"),
        MX("dest.test", 5, "first.dest.test"),
        A("a.dest.test", "127.0.0.1"), A("b.dest.test", "127.0.0.1"),
        A("first.dest.test", "127.0.0.1"),
    ])  # fmt: skip
    config = parse_config({"dns": {"nameservers": [f"{dns.host}:{dns.port}"]}})
    router = Router({}, make_resolver(config.dns))
    orders = set()
    for _ in range(40):
        hops = await router.next_hops("dest.test")
        assert hops[0].name == "first.dest.test"
        assert all(h.source is HopSource.MX for h in hops)
        orders.add(tuple(h.name for h in hops[1:]))
    assert orders == {("a.dest.test", "b.dest.test"), ("b.dest.test", "a.dest.test")}


async def test_implicit_mx_when_the_domain_has_only_an_address(smtp_peer, dns_server, ca_file):
    peer = await smtp_peer(Script())
    dns = dns_server([A("dest.test", "127.0.0.1")])
    [result] = await deliver(mx_config(dns, peer.port, ca_file))
    assert result.status is Status.DELIVERED
    assert result.host == f"dest.test:{peer.port}"


async def test_null_mx_bounces_at_once(dns_server, ca_file):
    dns = dns_server([MX("dest.test", 0, ".")])
    [result] = await deliver(mx_config(dns, 25, ca_file))
    assert result.status is Status.BOUNCED
    assert "null MX" in result.reason
    assert result.enhanced_status == "5.1.10"
    assert result.attempts == ()


async def test_nxdomain_bounces_and_servfail_defers(dns_server, ca_file):
    dns = dns_server([NXDomain("dest.test"), ServFail("broken.test")])
    config = mx_config(dns, 25, ca_file)
    [result] = await deliver(config)
    assert result.status is Status.BOUNCED and "NXDOMAIN" in result.reason
    [result] = await deliver(config, ("u@broken.test",))
    assert result.status is Status.DEFERRED
    assert "MX lookup for broken.test failed" in result.reason


async def test_ipv6_then_ipv4_addresses_of_a_host(smtp_peer, dns_server, ca_file):
    peer = await smtp_peer(Script())  # 127.0.0.1 only: nothing listens on ::1 at that port
    dns = dns_server([
        MX("dest.test", 10, "mx.example.test"),
        AAAA("mx.example.test", "::1"), A("mx.example.test", "127.0.0.1"),
    ])  # fmt: skip
    [result] = await deliver(mx_config(dns, peer.port, ca_file))
    assert result.status is Status.DELIVERED
    assert [(a.ip, a.result) for a in result.attempts] == [
        ("::1", AttemptResult.CONNECT_FAILED),
        ("127.0.0.1", AttemptResult.DELIVERED),
    ]


async def test_cname_is_followed_and_unresolvable_hosts_are_skipped(smtp_peer, dns_server, ca_file):
    peer = await smtp_peer(Script())
    dns = dns_server([
        MX("dest.test", 10, "ghost.dest.test"),
        MX("dest.test", 20, "alias.dest.test"),
        NXDomain("ghost.dest.test"),
        CNAME("alias.dest.test", "mx.example.test"),
        A("mx.example.test", "127.0.0.1"),
    ])  # fmt: skip
    [result] = await deliver(mx_config(dns, peer.port, ca_file))
    assert result.status is Status.DELIVERED
    assert result.attempts[0].result == AttemptResult.NO_ADDRESS
    assert result.host == f"alias.dest.test:{peer.port}"


def _fifty_mx() -> list:
    names = [f"mx{i:02d}.dest.test" for i in range(50)]
    return [MX("dest.test", 10 + i, n) for i, n in enumerate(names)] + [
        A(n, "127.0.0.1") for n in names
    ]


async def test_one_attempt_tries_at_most_five_mx_addresses(smtp_peer, dns_server, ca_file, caplog):
    # Each of the fifty MX hosts greets with 421: every connection shows at the peer.
    peer = await smtp_peer(Script(greeting="421 4.3.2 try later"))
    dns = dns_server(_fifty_mx())
    caplog.set_level("INFO", logger="relaymail.routing")
    [result] = await deliver(mx_config(dns, peer.port, ca_file))
    assert result.status is Status.DEFERRED
    assert peer.connections == 5
    tried = [f"mx{i:02d}.dest.test:{peer.port}" for i in range(5)]
    assert [a.host for a in result.attempts] == tried
    [cut] = [r for r in caplog.records if r.name == "relaymail.routing"]
    assert "delivery.max_mx_addresses = 5" in cut.getMessage()


async def test_refused_connections_count_against_the_cap(dns_server, ca_file):
    with socket.socket() as probe:  # a port nothing listens on: every connect is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dns = dns_server(_fifty_mx())
    config = mx_config(dns, port, ca_file)
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    assert [a.result for a in result.attempts] == [AttemptResult.CONNECT_FAILED] * 5


async def test_the_cap_counts_addresses_not_hosts(smtp_peer, dns_server, ca_file):
    v6 = await smtp_peer(Script(greeting="421 4.3.2 later"), host="::1")
    v4 = await smtp_peer(Script(greeting="421 4.3.2 later"), port=v6.port)
    dns = dns_server([
        MX("dest.test", 10, "mx1.dest.test"), MX("dest.test", 20, "mx2.dest.test"),
        AAAA("mx1.dest.test", "::1"), A("mx1.dest.test", "127.0.0.1"),
        AAAA("mx2.dest.test", "::1"), A("mx2.dest.test", "127.0.0.1"),
    ])  # fmt: skip
    config = mx_config(dns, v6.port, ca_file)
    config = dataclasses.replace(
        config, delivery=dataclasses.replace(config.delivery, max_mx_addresses=3)
    )
    [result] = await deliver(config)
    assert [(a.host.split(":")[0], a.ip) for a in result.attempts] == [
        ("mx1.dest.test", "::1"), ("mx1.dest.test", "127.0.0.1"), ("mx2.dest.test", "::1"),
    ]  # fmt: skip
    assert (v6.connections, v4.connections) == (2, 1)
