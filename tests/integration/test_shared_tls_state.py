"""Node A learns, node B enforces: two delivery engines with configurations of their own on
one state database (PostgreSQL: the cluster's; SQLite: two processes of one node)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from relaymail.config import Config, parse_config
from relaymail.config_queue import QueueBackend, QueueSettings
from relaymail.delivery import AttemptResult, Status
from relaymail.tls.downgrade import DowngradeKind, Remembered, TlsLevel
from relaymail.tls.memory import TlsMemory
from tests.integration.conftest import deliver, hop
from tests.integration.daemon_process import RELAYMAIL, run_command, write_toml
from tests.peers.smtp_server import Script, SMTPPeer


def node_config(
    node: str, queue: QueueSettings, tmp_path: Path, peer: SMTPPeer, ca_file: Path
) -> Config:
    """Node `node`'s configuration: its own queue directory, the shared backend."""
    section: dict[str, Any] = {"directory": str(tmp_path / node), "node": node}
    if queue.backend is QueueBackend.POSTGRESQL:
        section |= {"backend": "postgresql", "dsn": queue.dsn}
    else:  # two processes of one node share its directory
        section["directory"] = str(queue.directory)
    return parse_config({
        "delivery": {"helo_name": f"{node}.relaymail.test", "command_timeout": 3.0,
                     "connection_idle_time": 0.01},
        "tls": {"ca_file": str(ca_file), "remember": True},
        "queue": section,
        "routes": {"dest.test": [hop(peer)]},
    })  # fmt: skip


def recall(config: Config, domain: str) -> Remembered | None:
    memory = TlsMemory(config.queue, config.tls.remember_for)
    try:
        return memory.recall(domain)
    finally:
        memory.close()


@pytest.mark.parametrize(
    ("downgraded", "kind"),
    [
        (Script(advertise_starttls=False), DowngradeKind.STRIPPING),
        (Script(cert_names=("other.test",)), DowngradeKind.CERTIFICATE),
    ],
    ids=["starttls-stripped", "certificate-unverified"],
)
async def test_node_a_learns_verified_tls_and_node_b_defers_a_downgrade(
    smtp_peer, ca_file, tmp_path, state_queue, downgraded, kind
):
    peer = await smtp_peer(Script())
    a = node_config("a", state_queue, tmp_path, peer, ca_file)
    b = node_config("b", state_queue, tmp_path, peer, ca_file)

    [first] = await deliver(a)
    assert first.status is Status.DELIVERED and first.tls.verified
    learnt = recall(b, "dest.test")
    assert learnt is not None and learnt.level is TlsLevel.VERIFIED
    today = time.strftime("%Y-%m-%d", time.gmtime(learnt.since))

    peer.script = downgraded
    [result] = await deliver(b)
    assert result.status is Status.DEFERRED
    [attempt] = result.attempts
    assert attempt.result == AttemptResult.TLS_POLICY_FAILED
    assert f"verified since {today}, now" in attempt.detail
    assert f"possible {kind.value}; deferred" in attempt.detail
    assert len(peer.transactions) == 1  # only A's message reached the server

    # B's operator forgets the domain: A takes it as it comes now.
    memory = TlsMemory(b.queue, b.tls.remember_for)
    try:
        assert memory.forget("dest.test")
    finally:
        memory.close()
    [again] = await deliver(a)
    assert again.status is Status.DELIVERED


async def test_a_level_that_rises_on_one_node_is_what_the_other_enforces(
    smtp_peer, ca_file, tmp_path, state_queue
):
    peer = await smtp_peer(Script(cert_names=("other.test",)))
    a = node_config("a", state_queue, tmp_path, peer, ca_file)
    b = node_config("b", state_queue, tmp_path, peer, ca_file)
    [unverified] = await deliver(a)
    assert unverified.status is Status.DELIVERED and unverified.tls.used
    assert not unverified.tls.verified

    peer.script = Script()  # the domain fixes its certificate
    [verified] = await deliver(b)
    assert verified.tls.verified
    found = recall(a, "dest.test")
    assert found is not None and found.level is TlsLevel.VERIFIED


async def test_tls_show_and_forget_through_the_cli(smtp_peer, ca_file, tmp_path, state_queue):
    peer = await smtp_peer(Script())
    a = node_config("a", state_queue, tmp_path, peer, ca_file)
    [first] = await deliver(a)
    assert first.tls.verified
    queue: dict[str, Any] = {"directory": tmp_path / "cli"}
    if state_queue.backend is QueueBackend.POSTGRESQL:
        queue |= {"backend": "postgresql", "dsn": state_queue.dsn}
    else:
        queue["directory"] = state_queue.directory
    path = write_toml(tmp_path / "cli.toml", {"queue": queue, "tls": {"remember": True}})

    code, out, err = await run_command(
        RELAYMAIL, "tls", "show", "dest.test", "-C", str(path), "--json"
    )
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert (shown["domain"], shown["level"], shown["enforced"]) == ("dest.test", "verified", True)
    assert shown["since"] == shown["last_seen"] and shown["since"].endswith("Z")

    code, out, _ = await run_command(RELAYMAIL, "tls", "show", "dest.test", "-C", str(path))
    assert code == 0 and out.startswith("dest.test: verified TLS since 20")

    code, out, _ = await run_command(RELAYMAIL, "tls", "forget", "dest.test", "-C", str(path))
    assert (code, out) == (0, "dest.test: forgotten\n")
    code, out, _ = await run_command(
        RELAYMAIL, "tls", "show", "DEST.test.", "-C", str(path), "--json"
    )
    nothing = dict.fromkeys(("level", "since", "last_seen", "expires"))
    assert (code, json.loads(out)) == (0, {"domain": "dest.test", **nothing, "enforced": True})


async def test_tls_show_with_an_unreachable_database_is_one_line_and_75(tmp_path):
    path = write_toml(tmp_path / "cli.toml", {"queue": {
        "directory": tmp_path / "q", "backend": "postgresql",
        "dsn": "postgresql://nobody:secret@127.0.0.1:1/relaymail",
    }})  # fmt: skip
    code, out, err = await run_command(RELAYMAIL, "tls", "show", "dest.test", "-C", str(path))
    assert (code, out) == (75, "")
    assert err.startswith("relaymail: PostgreSQL 127.0.0.1/relaymail") and "secret" not in err
    assert len(err.splitlines()) == 1


async def test_delivery_with_an_unreachable_state_database_goes_on_without_memory(
    smtp_peer, ca_file, tmp_path
):
    """The memory is opportunistic, as `may` is: a database out of reach costs it, not mail."""
    peer = await smtp_peer(Script())
    config = parse_config({
        "delivery": {"helo_name": "a.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": str(ca_file), "remember": True},
        "queue": {"directory": str(tmp_path / "a"), "backend": "postgresql",
                  "dsn": "postgresql://nobody@127.0.0.1:1/relaymail"},
        "routes": {"dest.test": [hop(peer)]},
    })  # fmt: skip
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED and result.tls.verified
