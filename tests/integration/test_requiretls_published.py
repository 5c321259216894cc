"""REQUIRETLS to a domain that publishes MTA-STS: only `enforce` authenticates its MX name.

Real unbound serves the MX and TXT records, a real HTTPS server the policy, a scripted
server plays the MX, as in test_published_policies.py.
"""

from __future__ import annotations

import pytest

from relaymail.delivery import AttemptResult, DeliveryEngine, Status
from relaymail.message import Envelope
from tests.integration.conftest import MESSAGE
from tests.integration.test_published_policies import config, start_policy_server, zone
from tests.peers.smtp_server import DEFAULT_CAPABILITIES, Script

OFFERS_REQUIRETLS = (*DEFAULT_CAPABILITIES, "REQUIRETLS")


async def deliver_requiretls(cfg, data: bytes = MESSAGE):
    engine = DeliveryEngine(cfg)
    try:
        [result] = await engine.deliver(
            Envelope("a@src.test", ("u@dest.test",), requiretls=True), data
        )
    finally:
        await engine.close()
    return result


@pytest.mark.parametrize("header", [b"", b"TLS-Required: No\r\n"])
async def test_mta_sts_enforce_authenticates_the_mx_and_requiretls_wins_over_the_header(
    smtp_peer, dns_server, ca_file, tmp_path, header
):
    peer = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS))
    https = await start_policy_server("enforce")
    try:
        dns = dns_server(zone())
        cfg = config(dns, peer.port, https.port, ca_file, tmp_path)
        # With REQUIRETLS on MAIL, TLS-Required: No is ignored (RFC 8689 4.1): the
        # policy stays MTA-STS's verify, where the header alone would have made it `may`.
        result = await deliver_requiretls(cfg, header + MESSAGE)
    finally:
        await https.stop()

    assert result.status is Status.DELIVERED, result.reason
    assert result.tls.verified
    assert "MTA-STS enforce" in (result.policy or "") and "REQUIRETLS" in (result.policy or "")
    [mail] = [line for line in peer.transcript if line.verb == "MAIL"]
    assert mail.tls and mail.text.endswith(" REQUIRETLS")


async def test_mta_sts_testing_authenticates_nothing_so_requiretls_bounces_unsent(
    smtp_peer, dns_server, ca_file, tmp_path
):
    peer = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS))
    https = await start_policy_server("testing")
    try:
        dns = dns_server(zone())
        result = await deliver_requiretls(config(dns, peer.port, https.port, ca_file, tmp_path))
    finally:
        await https.stop()

    assert (result.status, result.enhanced_status) == (Status.BOUNCED, "5.7.30")
    assert [a.result for a in result.attempts] == [AttemptResult.REQUIRETLS_UNAUTHENTICATED]
    assert peer.connections == 0
