"""Shared set-up for tests that deliver through the real engine to real loopback peers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from relaymail.config import Config, parse_config
from relaymail.delivery import DeliveryEngine, RecipientResult
from relaymail.dsn_request import DsnRequest
from relaymail.message import Envelope, canonical_data
from relaymail.queue import SqliteStore
from tests.integration.inbound_harness import (  # noqa: F401 (fixtures for the inbound tests)
    ca,
    client_tls,
    clients,
    listen,
    server_tls,
    users,
)
from tests.integration.state_backends import (  # noqa: F401 (fixtures for the state tests)
    state_backend,
    state_queue,
)
from tests.peers.smtp_server import SMTPPeer

MESSAGE = canonical_data(
    b"From: a@sender.test\nTo: u@dest.test\nSubject: test\n\nHello.\n.dot line\n"
)


@pytest.fixture
def ca_file(tmp_path: Path, tls_ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    return tmp_path / "queue"


@pytest.fixture
async def store(queue_dir: Path) -> AsyncIterator[SqliteStore]:
    """A SQLite queue in `queue_dir`, closed after the test."""
    opened = SqliteStore.open(queue_dir)
    yield opened
    await opened.close()


def hop(peer: SMTPPeer) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{host}:{peer.port}"


def config_for(
    peers: Sequence[SMTPPeer | str],
    *,
    ca_file: Path,
    level: str = "may",
    fallback: bool = True,
    domain: str = "dest.test",
    **delivery: Any,
) -> Config:
    """Routes `domain` to `peers` in order, with `level` as its TLS policy."""
    return parse_config(
        {
            "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0, **delivery},
            "tls": {
                "tempfail_fallback": fallback,
                "ca_file": str(ca_file),
                "policy": {domain: level},
            },
            "routes": {domain: [p if isinstance(p, str) else hop(p) for p in peers]},
            # TLS-RPT counters and policy caches live beside the queue: keep them per test.
            "queue": {"directory": str(ca_file.parent / "state")},
        }
    )


async def deliver(
    config: Config,
    recipients: Sequence[str] = ("u@dest.test",),
    data: bytes = MESSAGE,
    sender: str = "a@sender.test",
    *,
    requiretls: bool = False,
    dsn: DsnRequest | None = None,
) -> list[RecipientResult]:
    engine = DeliveryEngine(config)
    try:
        return await engine.deliver(Envelope(sender, tuple(recipients), requiretls, dsn), data)
    finally:
        await engine.close()


def envelope_lines(peer: SMTPPeer) -> list[tuple[bool, str]]:
    """(sent over TLS?, line) for every MAIL, RCPT and DATA the peer received."""
    return [
        (line.tls, line.text) for line in peer.transcript if line.verb in ("MAIL", "RCPT", "DATA")
    ]
