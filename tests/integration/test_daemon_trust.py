"""`relaymail serve` as a process: per-client limits and sender login binding from the TOML file.

The keys travel the whole way: the file, check_server_config, the listeners the daemon
binds; swaks speaks STARTTLS and AUTH to a submission listener with a trustme certificate.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import trustme

from relaymail.passwords import hash_password
from tests.integration.daemon_process import Daemon, free_port, run_command, write_toml
from tests.integration.inbound_harness import Client

pytestmark = pytest.mark.timeout(90)

PASSWORD = "alice's password"


@pytest.fixture
async def daemon(tmp_path: Path, tls_ca: trustme.CA, ca_file: Path):
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    relay, submission = free_port(), free_port()
    config = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": tmp_path / "queue"},
        "routes": {"*": ["127.0.0.1:9"]},  # nothing is delivered in these tests
        "users.alice": {"password_hash": hash_password(PASSWORD, log2_n=10),
                        "addresses": ["alice@example.org", "@example.net"]},
        "listener": [
            {"address": f"127.0.0.1:{relay}", "relay_networks": [], "relay_domains": [],
             "max_connections_per_client": 2},
            {"address": f"127.0.0.1:{submission}", "mode": "submission",
             "tls_cert_file": cert_file, "tls_key_file": key_file},
        ],
    })  # fmt: skip
    process = Daemon(config, submission, tmp_path / "serve.log")
    await process.start()
    yield process, relay, submission
    await process.stop()


async def submit(port: int, sender: str, header_from: str) -> tuple[int, str]:
    code, out, err = await run_command(
        "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--tls",
        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORD,
        "--from", sender, "--to", "b@elsewhere.test", "--header", f"From: {header_from}",
    )  # fmt: skip
    return code, out + err


async def test_max_connections_per_client_from_the_file_keeps_a_slot_for_others(daemon) -> None:
    _, relay, _ = daemon
    opened = []
    for _ in range(2):
        client, greeting = await Client.connect(relay, source="127.0.0.1")
        opened.append(client)
        assert greeting.code == 220
    third, refused = await Client.connect(relay, source="127.0.0.1")
    other, greeting = await Client.connect(relay, source="127.0.0.2")
    assert (refused.code, refused.text) == (421, "4.7.0 Too many connections from your address")
    assert greeting.code == 220
    for client in (*opened, third, other):
        await client.close()


async def test_users_table_from_the_file_binds_alice_to_her_addresses(daemon) -> None:
    process, _, submission = daemon
    code, out = await submit(submission, "alice@example.org", "Alice <alice@example.org>")
    assert code == 0, out
    assert "250 2.0.0 Ok: queued as" in out
    code, out = await submit(submission, "news@example.net", "CEO <ceo@bank.example>")
    assert code != 0
    assert "553 5.7.1 From: address <ceo@bank.example> is not owned by user alice" in out
    code, out = await submit(submission, "ceo@bank.example", "alice@example.org")
    assert "553 5.7.1 Sender address <ceo@bank.example> is not owned by user alice" in out
    accepted = [line for line in process.text().splitlines() if "relaymail.accepted: " in line]
    assert len(accepted) == 1 and "from=<alice@example.org>" in accepted[0]


async def rcpt_code(port: int, recipient: str) -> int:
    client, _ = await Client.connect(port)
    await client.command("EHLO client.test")
    await client.command("MAIL FROM:<victim@innocent.test>")
    code = (await client.command(f"RCPT TO:<{recipient}>")).code
    await client.close()
    return code


async def test_sighup_rereads_the_recipients_list_and_keeps_it_when_the_new_one_is_bad(
    tmp_path: Path, ca_file: Path
) -> None:
    listed = tmp_path / "relay-recipients"
    listed.write_text("known@plain.test\n")
    port = free_port()
    config = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test"},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": tmp_path / "queue"},
        "recipient_verification": {"mode": "list", "recipients_file": listed},
        "listener": [{"address": f"127.0.0.1:{port}", "relay_networks": [],
                      "relay_domains": ["plain.test"]}],
    })  # fmt: skip
    process = Daemon(config, port, tmp_path / "serve.log")
    await process.start()
    try:
        assert [await rcpt_code(port, r) for r in ("known@plain.test", "new@plain.test")] == [
            250, 550,
        ]  # fmt: skip
        listed.write_text("known@plain.test\nnew@plain.test\n")
        await process.signal(signal.SIGHUP)
        while "reloaded" not in process.text():
            await asyncio.sleep(0.05)
        assert await rcpt_code(port, "new@plain.test") == 250
        listed.write_text("known@plain.test\nno domain\n")
        await process.signal(signal.SIGHUP)
        while "reload refused" not in process.text():
            await asyncio.sleep(0.05)
        assert "relay-recipients line 2" in process.text()
        assert await rcpt_code(port, "new@plain.test") == 250
    finally:
        assert await process.stop() == 0
