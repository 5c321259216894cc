"""`relaymail probe` and delivery take the same decision at the STARTTLS step.

Both run one function (relaymail.delivery.starttls), so the probe cannot say "continue in clear"
where delivery would defer: the downgrade memory counts in both.
"""

from __future__ import annotations

import pytest

from relaymail.commands.probe import probe_domain
from relaymail.config import parse_config
from relaymail.delivery import AttemptResult, Status
from relaymail.tls.policy import Action
from tests.integration.conftest import config_for, deliver, hop
from tests.peers.smtp_server import Script

# What delivery's attempt line calls each action.
ATTEMPT_RESULT = {Action.HOST_FAILS: AttemptResult.TLS_POLICY_FAILED}


@pytest.mark.parametrize(
    ("changed", "action", "status"),
    [
        (Script(advertise_starttls=False), Action.HOST_FAILS, Status.DEFERRED),
        (Script(starttls="454 4.7.0 TLS not available"), Action.HOST_FAILS, Status.DEFERRED),
        (Script(cert_names=("other.test",)), Action.HOST_FAILS, Status.DEFERRED),
    ],
    ids=["starttls-vanished", "starttls-454", "certificate-unverified"],
)
async def test_probe_and_delivery_agree_for_a_remembered_domain(
    smtp_peer, ca_file, tmp_path, changed, action, status
):
    peer = await smtp_peer(Script())
    config = parse_config({
        "delivery": {"helo_name": "client.relaymail.test", "command_timeout": 3.0,
                     "connection_idle_time": 0.01},
        "tls": {"ca_file": str(ca_file), "remember": True},
        "queue": {"directory": str(tmp_path / "queue")},
        "routes": {"dest.test": [hop(peer)]},
    })  # fmt: skip
    [first] = await deliver(config)
    assert first.status is Status.DELIVERED and first.tls.verified

    peer.script = changed
    report = await probe_domain("dest.test", config)
    [host] = report.hosts
    assert host.decision is not None, host.error
    assert host.decision.action is action

    [result] = await deliver(config)
    assert result.status is status, result.reason
    [attempt] = [a for a in result.attempts if a.result == ATTEMPT_RESULT[action]]
    assert attempt.detail == host.decision.reason


async def test_probe_under_none_does_not_ask_for_starttls_as_delivery_does(smtp_peer, ca_file):
    peer = await smtp_peer(Script())
    config = config_for([peer], ca_file=ca_file, level="none")
    [host] = (await probe_domain("dest.test", config)).hosts
    assert host.decision is not None, host.error
    assert host.decision.action is Action.CONTINUE_CLEAR
    assert host.event is None and host.tls.used is False
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED and result.tls.used is False
    assert "STARTTLS" not in peer.lines()
