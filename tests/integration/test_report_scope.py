"""TLS reports speak only of a domain's own MX hosts (RFC 8460 4.3: the receiving MX).

A static route or smarthost is the sender's own infrastructure: counting its sessions under
the recipient's domain would report bogus data to that domain and tell it about hosts it
has nothing to do with.
"""

from __future__ import annotations

import datetime as dt

from relaymail.config import parse_config
from relaymail.delivery import Status
from relaymail.tls.reporting import TlsReportStore
from tests.integration.conftest import deliver, hop
from tests.peers.dns_server import MX, A
from tests.peers.smtp_server import Script


def reported_domains(state) -> list[str]:
    store = TlsReportStore(state)
    try:
        return store.domains(dt.datetime.now(dt.UTC).date())
    finally:
        store.close()


async def test_sessions_to_a_smarthost_are_not_counted_for_the_recipient_domain(
    smtp_peer, ca_file, tmp_path
):
    peer = await smtp_peer(Script())
    config = parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": str(ca_file)},
        "routes": {"*": [hop(peer)]},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.used
    assert reported_domains(tmp_path / "state") == []


async def test_sessions_to_the_domain_mx_are_counted(smtp_peer, dns_server, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    dns = dns_server([MX("dest.test", 10, "mx.example.test"), A("mx.example.test", "127.0.0.1")])
    config = parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0,
                     "port": peer.port},
        "tls": {"ca_file": str(ca_file), "mta_sts": False},
        "dns": {"nameservers": [f"{dns.host}:{dns.port}"], "timeout": 3.0},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED, result.reason
    assert reported_domains(tmp_path / "state") == ["dest.test"]
