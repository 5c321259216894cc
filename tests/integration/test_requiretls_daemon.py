"""REQUIRETLS end to end: a raw client submits over STARTTLS to a real `relaymail serve`,
the flag lives in the queue across a restart, and scripted next hops take it or bounce it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trustme

from relaymail.delivery import AttemptResult
from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.integration.inbound_harness import MESSAGE, Client
from tests.integration.test_daemon import dsns, wait_for
from tests.peers.certs import client_context
from tests.peers.smtp_server import DEFAULT_CAPABILITIES, Script, SMTPPeer

pytestmark = pytest.mark.timeout(90)

OFFERS_REQUIRETLS = (*DEFAULT_CAPABILITIES, "REQUIRETLS")
SENDER, RECIPIENT = "a@client.example", "u@dest.test"


def configure(tmp_path: Path, tls_ca: trustme.CA, ca_file: Path, port: int, routes: Any) -> Path:
    leaf = tls_ca.issue_cert("localhost", "127.0.0.1")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "listener.pem"))
    return write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": ca_file},
        "tls.policy": {"dest.test": "verify"},
        "queue": {"directory": tmp_path / "queue", "retry": ["1s"]},
        "routes": routes,
        "listener": [{
            "address": f"127.0.0.1:{port}", "relay_networks": ["127.0.0.0/8"],
            "tls_cert_file": tmp_path / "listener.pem", "tls_key_file": tmp_path / "listener.pem",
        }],
    })  # fmt: skip


async def submit_with_requiretls(port: int, tls_ca: trustme.CA) -> str:
    """MAIL FROM with REQUIRETLS over STARTTLS; the queue id from the 250."""
    client, _ = await Client.connect(port)
    try:
        ehlo = await client.hello_over_tls(client_context(tls_ca))
        assert "REQUIRETLS" in [line[4:] for line in ehlo.lines]
        assert (await client.command(f"MAIL FROM:<{SENDER}> REQUIRETLS")).code == 250
        assert (await client.command(f"RCPT TO:<{RECIPIENT}>")).code == 250
        assert (await client.command("DATA")).code == 354
        client.send(MESSAGE + b".\r\n")
        final = await client.reply()
        assert final.code == 250, final
        return final.text.rsplit(" ", 1)[1]
    finally:
        await client.close()


async def queue_show(config: Path, queue_id: str) -> dict[str, Any]:
    code, out, err = await run_command(RELAYMAIL, "queue", "--config", str(config), "--json",
                                       "show", queue_id)  # fmt: skip
    assert code == 0, err
    shown: dict[str, Any] = json.loads(out)
    return shown


async def test_the_flag_survives_a_restart_and_goes_on_to_the_next_hop(
    smtp_peer, tls_ca, ca_file, tmp_path
):
    next_hop_port, port = free_port(), free_port()
    routes = {"dest.test": [f"127.0.0.1:{next_hop_port}"]}
    config = configure(tmp_path, tls_ca, ca_file, port, routes)
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        # The next hop is not there yet: the message waits, deferred.
        queue_id = await submit_with_requiretls(port, tls_ca)
        await wait_for(lambda: "status=deferred" in daemon.text(), what="a deferral")
    finally:
        assert await daemon.stop() == 0
    shown = await queue_show(config, queue_id)
    assert shown["requiretls"] is True
    assert [r["state"] for r in shown["recipients"]] == ["deferred"]
    code, text, err = await run_command(RELAYMAIL, "queue", "--config", str(config), "show",
                                        queue_id)  # fmt: skip
    assert code == 0, err
    assert "REQUIRETLS" in text.splitlines()[0]

    peer: SMTPPeer = await smtp_peer(Script(ehlo_after_tls=OFFERS_REQUIRETLS), port=next_hop_port)
    await daemon.start()
    try:
        await wait_for(lambda: peer.transactions, what="the delivery after the restart")
    finally:
        assert await daemon.stop() == 0
    [transaction] = peer.transactions
    assert transaction.tls and transaction.recipients == (RECIPIENT,)
    [mail] = [line for line in peer.transcript if line.verb == "MAIL"]
    assert mail.tls and mail.text.endswith(" REQUIRETLS")


async def test_a_next_hop_without_requiretls_bounces_5_7_30_and_the_dsn_says_why(
    smtp_peer, tls_ca, ca_file, tmp_path
):
    plain = await smtp_peer(Script())  # verified TLS, no REQUIRETLS after it
    mailbox = await smtp_peer(Script())
    port = free_port()
    routes = {"dest.test": [hop(plain)], "client.example": [hop(mailbox)]}
    config = configure(tmp_path, tls_ca, ca_file, port, routes)
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        await submit_with_requiretls(port, tls_ca)
        await wait_for(lambda: dsns(mailbox), what="a bounce")
    finally:
        assert await daemon.stop() == 0
    assert not [line for line in plain.transcript if line.verb in ("MAIL", "RCPT", "DATA")]
    [bounce] = dsns(mailbox)
    status = next(
        p for p in bounce.iter_parts() if p.get_content_type() == "message/delivery-status"
    )
    text = status.as_string()
    assert "Status: 5.7.30" in text and "Action: failed" in text
    explanation = next(p for p in bounce.iter_parts() if p.get_content_type() == "text/plain")
    assert "REQUIRETLS" in explanation.get_content()
    # Nothing of the message itself goes back, perhaps in clear: not even its Subject:.
    assert b"Subject: hi" not in mailbox.transactions[0].data
    assert f"result={AttemptResult.REQUIRETLS_REFUSED.value}" in daemon.text()
