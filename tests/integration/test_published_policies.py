"""Policies a domain publishes (MTA-STS) and the reports it asks for (TLS-RPT), end to end.

Real unbound serves MX, TXT and A records; a real HTTPS server serves the MTA-STS
policy; misbehaving SMTP servers play the MX. The point of it all: a domain that
promised TLS never gets mail in clear, whatever tempfail_fallback says, and the
failure reaches its TLS report.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import gzip
import json
import time

import pytest

from relaymail.config import parse_config
from relaymail.delivery import AttemptResult, DeliveryEngine, Status
from relaymail.message import Envelope
from relaymail.tls.reporting import TlsReportStore, preview_reports, send_daily_reports
from tests.integration.conftest import MESSAGE
from tests.integration.daemon_process import RELAYMAIL, run_command, write_toml
from tests.peers.certs import server_context
from tests.peers.dns_server import AAAA, MX, TXT, A
from tests.peers.https_server import HTTPSServer, Response
from tests.peers.smtp_server import Script

POLICY = "version: STSv1\nmode: {mode}\nmx: mx.example.test\nmax_age: 86400\n"


async def start_policy_server(mode: str) -> HTTPSServer:
    server = HTTPSServer(
        {"/.well-known/mta-sts.txt": Response.policy(POLICY.format(mode=mode))},
        context=server_context(("mta-sts.dest.test",)),
    )
    await server.start()
    return server


def zone(mx: str = "mx.example.test", address: str = "127.0.0.1") -> list:
    return [
        MX("dest.test", 10, mx), AAAA(mx, address) if ":" in address else A(mx, address),
        TXT("_mta-sts.dest.test", "v=STSv1; id=20261129;"), A("mta-sts.dest.test", "127.0.0.1"),
        TXT("_smtp._tls.dest.test", "v=TLSRPTv1; rua=mailto:tlsrpt@dest.test"),
    ]  # fmt: skip


def config(dns, smtp_port: int, https_port: int, ca_file, tmp_path, **tls):
    return parse_config({
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 3.0,
                     "port": smtp_port},
        "tls": {"ca_file": str(ca_file), "mta_sts_ca_file": str(ca_file),
                "mta_sts_port": https_port, **tls},
        "dns": {"nameservers": [f"{dns.host}:{dns.port}"], "timeout": 3.0},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip


async def deliver_one(cfg, rcpt="u@dest.test"):
    engine = DeliveryEngine(cfg)
    try:
        [result] = await engine.deliver(Envelope("a@src.test", (rcpt,)), MESSAGE)
    finally:
        await engine.close()
    return result


@pytest.fixture
async def policy_server():
    servers: list[HTTPSServer] = []

    async def start(mode: str) -> HTTPSServer:
        servers.append(await start_policy_server(mode))
        return servers[-1]

    yield start
    for server in servers:
        await server.stop()


async def test_enforce_never_falls_back_to_clear_and_the_report_says_why(
    smtp_peer, dns_server, policy_server, ca_file, tmp_path
):
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    https = await policy_server("enforce")
    dns = dns_server(zone())
    cfg = config(dns, peer.port, https.port, ca_file, tmp_path, tempfail_fallback=True)
    result = await deliver_one(cfg)
    assert result.status is Status.DEFERRED
    # tempfail_fallback is on, but the domain promised TLS: no cleartext.
    assert "policy verify never sends mail in clear" in result.reason
    assert not peer.transactions
    assert not [line for line in peer.transcript if line.verb in ("MAIL", "RCPT")]

    store = TlsReportStore(tmp_path / "state")
    try:
        [report] = preview_reports(store, domain="dest.test", organization_name="relaymail test",
                                   contact_info="postmaster@relay.relaymail.test")  # fmt: skip
    finally:
        store.close()
    [policy] = report["policies"]
    assert policy["policy"]["policy-type"] == "sts"
    assert policy["policy"]["mx-host"] == ["mx.example.test"]
    assert policy["summary"]["total-failure-session-count"] == 1
    [failure] = policy["failure-details"]
    assert failure["result-type"] == "starttls-not-supported"
    assert failure["receiving-mx-hostname"] == "mx.example.test"
    assert failure["sending-mta-ip"] == "127.0.0.1"

    # The admin's view of the same: `relaymail tlsrpt show`.
    path = write_toml(tmp_path / "relaymail.toml", {"queue": {"directory": tmp_path / "state"}})
    code, out, err = await run_command(RELAYMAIL, "tlsrpt", "--config", str(path), "show")
    assert code == 0, err
    [shown] = json.loads(out)
    assert shown["policies"][0]["failure-details"][0]["result-type"] == "starttls-not-supported"


async def test_enforce_skips_mx_hosts_outside_the_policy(
    smtp_peer, dns_server, policy_server, ca_file, tmp_path
):
    peer = await smtp_peer(Script())
    https = await policy_server("enforce")
    dns = dns_server(zone(mx="rogue.dest.test"))
    result = await deliver_one(config(dns, peer.port, https.port, ca_file, tmp_path))
    assert result.status is Status.DEFERRED
    assert result.attempts[0].result == AttemptResult.STS_MX_MISMATCH
    assert peer.connections == 0


async def test_enforce_delivers_verified_and_config_overrides_it(
    smtp_peer, dns_server, policy_server, ca_file, tmp_path
):
    peer = await smtp_peer(Script())
    https = await policy_server("enforce")
    dns = dns_server(zone())
    result = await deliver_one(config(dns, peer.port, https.port, ca_file, tmp_path))
    assert result.status is Status.DELIVERED
    assert result.tls.verified

    # The admin's explicit policy wins over what the domain publishes.
    refusing = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"), port=peer.port,
                               host="::1")  # fmt: skip
    dns2 = dns_server(zone(mx="mx6.dest.test", address="::1"))
    cfg = config(dns2, peer.port, https.port, ca_file, tmp_path, policy={"dest.test": "may"})
    assert (await deliver_one(cfg)).status is Status.DELIVERED
    assert refusing.transactions and not refusing.transactions[0].tls


async def test_testing_mode_delivers_in_clear_but_reports(
    smtp_peer, dns_server, policy_server, ca_file, tmp_path
):
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    https = await policy_server("testing")
    dns = dns_server(zone())
    result = await deliver_one(config(dns, peer.port, https.port, ca_file, tmp_path))
    assert result.status is Status.DELIVERED and not result.tls.used
    store = TlsReportStore(tmp_path / "state")
    try:
        summary = store.summary(dt.datetime.now(dt.UTC).date(), "dest.test")
    finally:
        store.close()
    assert summary is not None


async def test_daily_report_arrives_as_mail_and_is_not_held_to_the_policy(
    smtp_peer, dns_server, policy_server, ca_file, tmp_path
):
    # The report goes to the broken domain itself, whose enforce policy would defer it:
    # TLS-Required: No (RFC 8460 5.3, RFC 8689) lets it through in clear.
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    https = await policy_server("enforce")
    dns = dns_server(zone())
    cfg = config(dns, peer.port, https.port, ca_file, tmp_path)
    engine = DeliveryEngine(cfg)
    try:
        [failed] = await engine.deliver(Envelope("a@src.test", ("u@dest.test",)), MESSAGE)
        assert failed.status is Status.DEFERRED
        sent: list = []

        async def enqueue(envelope, data):
            sent.extend(await engine.deliver(envelope, data))
            return "report"

        store = TlsReportStore(tmp_path / "state")
        today = dt.datetime.now(dt.UTC).date()
        tomorrow = time.time() + 86400
        try:
            await send_daily_reports(store, today, engine.resolver, enqueue,
                                     organization_name="relaymail test",
                                     submitter="relay.relaymail.test",
                                     clock=lambda: tomorrow)  # fmt: skip
        finally:
            store.close()
    finally:
        await engine.close()
    [delivery] = sent
    assert delivery.status is Status.DELIVERED, delivery.reason
    [mail] = [t for t in peer.transactions if t.recipients == ("tlsrpt@dest.test",)]
    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    [attachment] = [
        p for p in message.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip"
    ]
    report = json.loads(gzip.decompress(attachment.get_content()))
    assert report["policies"][0]["policy"]["policy-domain"] == "dest.test"
    assert report["policies"][0]["summary"]["total-failure-session-count"] >= 1


async def test_probe_shows_which_policy_decides(
    smtp_peer, dns_server, policy_server, ca_file, tmp_path
):
    from relaymail.commands.probe import probe_domain, report_json

    peer = await smtp_peer(Script())
    https = await policy_server("enforce")
    dns = dns_server(zone())
    report = report_json(
        await probe_domain("dest.test", config(dns, peer.port, https.port, ca_file, tmp_path))
    )
    assert report["policy"]["level"] == "verify"
    assert report["policy"]["source"].startswith("MTA-STS enforce")
    assert report["mta_sts"]["mode"] == "enforce"
    assert report["mta_sts"]["mx"] == ["mx.example.test"]
    assert report["tlsrpt_rua"] == "mailto:tlsrpt@dest.test"
    [host] = report["hosts"]
    assert host["level"] == "verify" and host["tls"]["verified"]
    assert host["decision"]["action"] == "use TLS"
    assert not peer.transactions
