"""[routes] hosts resolve as the system does (/etc/hosts first), unless [dns] names servers.

Like Exim's manualroute and Postfix's relayhost: a route names the operator's own machine,
often only in /etc/hosts. MX hosts stay DNS-only (test_mx_routing.py).
"""

from __future__ import annotations

from relaymail.config import parse_config
from relaymail.delivery import AttemptResult, Status
from tests.integration.conftest import deliver
from tests.peers.dns_server import A
from tests.peers.smtp_server import Script


def route_config(route: str, tmp_path, nameservers: list[str] | None = None):
    raw = {
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0},
        "tls": {"default_level": "none"},
        "routes": {"dest.test": [route]},
        "queue": {"directory": str(tmp_path / "state")},
    }
    if nameservers is not None:
        raw["dns"] = {"nameservers": nameservers, "timeout": 3.0}
    return parse_config(raw)


async def test_a_route_to_localhost_delivers_through_etc_hosts(smtp_peer, tmp_path):
    peer = await smtp_peer(Script())
    [result] = await deliver(route_config(f"localhost:{peer.port}", tmp_path))
    assert result.status is Status.DELIVERED, result.reason
    assert result.host == f"localhost:{peer.port}"
    assert len(peer.transactions) == 1


async def test_an_unknown_route_host_defers_with_the_system_reason(tmp_path):
    [result] = await deliver(route_config("no-such-host.invalid:2525", tmp_path))
    assert result.status is Status.DEFERRED
    [attempt] = result.attempts
    assert attempt.result == AttemptResult.NO_ADDRESS


async def test_with_dns_servers_named_a_route_host_comes_from_dns(smtp_peer, dns_server, tmp_path):
    peer = await smtp_peer(Script())
    dns = dns_server([A("relay.dest.test", "127.0.0.1")])
    servers = [f"{dns.host}:{dns.port}"]
    [result] = await deliver(route_config(f"relay.dest.test:{peer.port}", tmp_path, servers))
    # relay.dest.test exists only in the test zone: the system's lookup could not find it.
    assert result.status is Status.DELIVERED, result.reason
    assert len(peer.transactions) == 1
