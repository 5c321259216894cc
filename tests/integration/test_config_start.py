"""`relaymail serve` refuses a bad configuration or a taken port: one line, a sysexits code."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from relaymail.commands.exits import EX_CONFIG, EX_OSERR
from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command
from tests.peers.smtp_server import Script

pytestmark = pytest.mark.timeout(90)

LISTENER = '[[listener]]\naddress = "127.0.0.1:2525"\n'

# TOML as an operator writes it: the values that parse and used to break at run time.
BAD_VALUES = [
    ("delivery.connect_timeout", "[delivery]\nconnect_timeout = nan\n"),
    ("delivery.command_timeout", "[delivery]\ncommand_timeout = inf\n"),
    ("delivery.data_timeout", "[delivery]\ndata_timeout = -inf\n"),
    ("delivery.destination_concurrency", "[delivery]\ndestination_concurrency = 1.5\n"),
    ("delivery.helo_name", '[delivery]\nhelo_name = "relay example"\n'),
    ("delivery.helo_name", '[delivery]\nhelo_name = "relay.example\\r\\nX: 1"\n'),
    ("queue.directory", '[queue]\ndirectory = ""\n'),
    ("queue.max_deliveries", "[queue]\nmax_deliveries = true\n"),
    ("tls.report_contact", '[tls]\nreport_contact = ""\n'),
    ("listener[0].idle_timeout", LISTENER + "idle_timeout = nan\n"),
    ("listener[0].max_recipients", LISTENER + 'max_recipients = "10"\n'),
    ("listener[0].max_recipients", LISTENER + "max_recipients = true\n"),
    ("listener[0].max_connections", LISTENER + "max_connections = 1.5\n"),
    ("listener[0].hostname", LISTENER + "hostname = 5\n"),
    ("listener[0].tls_cert_file", LISTENER + 'tls_cert_file = ""\ntls_key_file = ""\n'),
    ("listener[0].address", '[[listener]]\naddress = "127.0.0.1"\n'),
    (
        "listener[1].max_recipients",
        LISTENER + LISTENER.replace("2525", "2526") + "max_recipients = 0\n",
    ),
]


async def serve(config: Path) -> tuple[int, str, str]:
    """Run `serve` that must refuse to start; one that starts anyway is killed, and fails."""
    process = await asyncio.create_subprocess_exec(
        RELAYMAIL, "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail("serve started although it should have refused")
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("key", "toml"), BAD_VALUES, ids=[f"{k}:{t.splitlines()[-1]}" for k, t in BAD_VALUES]
)
async def test_serve_exits_78_naming_the_key_in_one_line(tmp_path, key, toml):
    # A free port, not 2525: a value wrongly accepted must not bind someone else's port.
    toml = toml.replace("2525", str(free_port()))
    if "[[listener]]" not in toml:
        toml += f'[[listener]]\naddress = "127.0.0.1:{free_port()}"\n'
    if "[queue]" not in toml:
        toml += f'[queue]\ndirectory = "{tmp_path / "queue"}"\n'
    config = tmp_path / "relaymail.toml"
    config.write_text(toml)
    code, out, err = await serve(config)
    assert (code, out) == (EX_CONFIG, "")
    assert err.splitlines() == [err.strip()], err
    assert err.startswith(f"relaymail: configuration error: {key}: "), err


async def test_a_listener_with_only_an_address_relays_from_loopback(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    port = free_port()
    config = tmp_path / "relaymail.toml"
    config.write_text(
        f'[queue]\ndirectory = "{tmp_path / "queue"}"\n'
        f'[tls]\nca_file = "{ca_file}"\n'
        f'[routes]\n"dest.test" = ["{hop(peer)}"]\n'
        f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
    )
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        code, out, err = await run_command(
            "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test",
            "--from", "a@src.test", "--to", "u@dest.test", "--body", "relayed",
        )  # fmt: skip
        assert code == 0, out + err
        async with asyncio.timeout(20):
            while not peer.transactions:
                await asyncio.sleep(0.05)
        assert peer.transactions[0].recipients == ("u@dest.test",)
    finally:
        assert await daemon.stop() == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_port_in_use_exits_71_naming_the_address_and_its_holder(tmp_path, host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        config = tmp_path / "relaymail.toml"
        config.write_text(
            f'[queue]\ndirectory = "{tmp_path / "queue"}"\n[[listener]]\naddress = "{address}"\n'
        )
        code, _, err = await serve(config)
    assert code == EX_OSERR, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("relaymail: ")]
    assert line.startswith(f"relaymail: cannot listen on {address}: "), err
    assert f"held by pid {os.getpid()} " in line, err
