"""A resolver that fails: delivery and `relaymail probe` name the same, real cause.

Both go through one description (relaymail.resolver): a REFUSED answer is not called
SERVFAIL, and a timeout names the server that stayed silent.
"""

from __future__ import annotations

import socket

import pytest

from relaymail.commands.probe import probe_domain
from relaymail.config import parse_config
from relaymail.delivery import Status
from tests.integration.conftest import deliver
from tests.peers.broken_resolver import BrokenResolver


def config_with_resolver(address: str, tmp_path):
    return parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0},
        "dns": {"nameservers": [address], "timeout": 1.0},
        "queue": {"directory": str(tmp_path / "state")},
    })  # fmt: skip


async def deferred_and_probed(config) -> tuple[str, str]:
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED, result.reason
    assert result.enhanced_status == "4.4.3"
    report = await probe_domain("dest.test", config)
    assert report.routing_error is not None
    return result.reason, report.routing_error


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "silent"])
async def test_a_failing_resolver_is_described_alike_in_delivery_and_probe(tmp_path, refuse):
    async with BrokenResolver(refuse=refuse) as server:
        config = config_with_resolver(f"{server.host}:{server.port}", tmp_path)
        reason, probed = await deferred_and_probed(config)
        assert server.queries > 0
    assert reason == probed
    where = f"127.0.0.1@{server.port}"
    if refuse:
        assert f"{where} answered REFUSED" in reason
        assert "SERVFAIL" not in reason
    else:
        assert "timed out" in reason and where in reason


async def test_a_resolver_port_where_nothing_listens_is_a_silent_server(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    # Unconnected UDP never hears the ICMP port-unreachable: silence, then a timeout.
    reason, probed = await deferred_and_probed(config_with_resolver(f"127.0.0.1:{port}", tmp_path))
    assert reason == probed
    assert "timed out" in reason and f"127.0.0.1@{port}" in reason
