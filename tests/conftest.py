"""Fixtures that start real peers on loopback and stop them when the test ends.

No fixture here skips: a missing peer program raises MissingPeerBinary, whose message names
the program and says to run scripts/install-test-peers. A skipped peer test would pass in
CI while proving nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.peers.binaries import peer_binary
from tests.peers.certs import client_context, peer_ca
from tests.peers.dns_server import DNSEntry, DNSServer, DNSServerFactory
from tests.peers.exim import EximFactory, EximPeer
from tests.peers.exim_config import EximOptions
from tests.peers.postgres import PostgresServer
from tests.peers.smtp_server import Script, SMTPPeer, SMTPPeerFactory


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """The CA behind every peer's default certificate."""
    return peer_ca()


@pytest.fixture
def client_tls_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts `tls_ca` (a fresh one per test)."""
    return client_context(tls_ca)


@pytest.fixture
async def smtp_peer() -> AsyncIterator[SMTPPeerFactory]:
    """`await smtp_peer(Script(...), host="127.0.0.1")` starts a peer; call it once per peer."""
    peers: list[SMTPPeer] = []

    async def start(
        script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> SMTPPeer:
        peer = SMTPPeer(script, host=host, port=port)
        await peer.start()
        peers.append(peer)
        return peer

    yield start
    for peer in reversed(peers):
        await peer.stop()


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DNSServerFactory]:
    """`dns_server([MX(...), A(...), ServFail(...)])` starts unbound answering those records."""
    servers: list[DNSServer] = []

    def start(entries: Iterable[DNSEntry], *, host: str = "127.0.0.1") -> DNSServer:
        server = DNSServer(entries, host=host, workdir=tmp_path / f"unbound-{len(servers)}")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def swaks() -> str:
    """The path of swaks, the reference SMTP client used to check the peers themselves."""
    return peer_binary("swaks")


@pytest.fixture
def exim(tmp_path: Path) -> Iterator[EximFactory]:
    """`exim(EximOptions(...))` starts a private Exim 4.96 on loopback (see tests/peers/exim.py).

    Its logs are copied to tmp_path/exim-N at teardown, for the post-mortem of a failure.
    """
    peers: list[EximPeer] = []

    def start(options: EximOptions | None = None, *, host: str = "127.0.0.1") -> EximPeer:
        peer = EximPeer(options, host=host, keep_logs=tmp_path / f"exim-{len(peers)}")
        peers.append(peer)
        peer.start()
        return peer

    yield start
    for peer in reversed(peers):
        peer.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster on loopback for the session (tests/peers/postgres.py)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of an empty database of this test's own on `postgres_server`."""
    return postgres_server.fresh_database()


@pytest.fixture
def postgres_schema_dsn(postgres_server: PostgresServer) -> str:
    """A DSN whose search_path is an empty schema of this test's own (cheaper than a database)."""
    return postgres_server.fresh_schema()
