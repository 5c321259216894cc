"""delays= `c`: the connection setup a recipient waited for, failed hosts included.

Postfix counts into `c` everything from the delivery agent's start to a session
ready for MAIL, so a first MX whose greeting never comes shows there, not in a
delay that no part of delays= explains. The lower bounds below are the timeouts
the daemon must have waited out, not measurements of its speed.
"""

from __future__ import annotations

import time
from pathlib import Path

from relaymail.config import Config
from relaymail.delivery import RecipientResult, Status
from tests.integration.conftest import config_for, deliver
from tests.peers.smtp_server import Action, Script, SMTPPeerFactory

TIMEOUT = 0.5  # command_timeout, which the greeting waits for


async def timed(config: Config) -> tuple[RecipientResult, float]:
    """The one recipient's result and the seconds the whole delivery took: a setup
    time counted once can never be more."""
    began = time.monotonic()
    [result] = await deliver(config)
    return result, time.monotonic() - began


async def test_a_host_whose_greeting_never_came_counts_into_the_next_hosts_setup(
    smtp_peer: SMTPPeerFactory, ca_file: Path
) -> None:
    silent = await smtp_peer(Script(greeting=None))
    good = await smtp_peer(Script())
    config = config_for([silent, good], ca_file=ca_file, command_timeout=TIMEOUT)
    result, took = await timed(config)
    assert result.status is Status.DELIVERED, result.reason
    assert len(good.transactions) == 1
    assert TIMEOUT <= result.setup_seconds <= took
    assert result.transmission_seconds < result.setup_seconds


async def test_a_deferral_after_every_host_failed_carries_their_setup(
    smtp_peer: SMTPPeerFactory, ca_file: Path
) -> None:
    silent = [await smtp_peer(Script(greeting=None)) for _ in range(2)]
    config = config_for(silent, ca_file=ca_file, command_timeout=TIMEOUT)
    result, took = await timed(config)
    assert result.status is Status.DEFERRED
    assert result.reason.startswith("no host accepted the mail: ")
    assert 2 * TIMEOUT <= result.setup_seconds <= took
    assert result.transmission_seconds == 0.0


async def test_a_host_that_refuses_a_recipient_after_a_failed_one_keeps_both_in_c(
    smtp_peer: SMTPPeerFactory, ca_file: Path
) -> None:
    silent = await smtp_peer(Script(greeting=None))
    refusing = await smtp_peer(Script(rcpt_replies={"u@dest.test": "550 5.1.1 no such user"}))
    config = config_for([silent, refusing], ca_file=ca_file, command_timeout=TIMEOUT)
    [result] = await deliver(config)
    assert result.status is Status.BOUNCED, result.reason
    assert result.setup_seconds >= TIMEOUT


async def test_a_host_that_dropped_the_transaction_counts_its_setup_too(
    smtp_peer: SMTPPeerFactory, ca_file: Path
) -> None:
    """Its session was ready (the greeting came, late), then it closed at MAIL."""
    dropping = await smtp_peer(Script(greeting_delay=TIMEOUT, mail_reply=Action.DROP))
    good = await smtp_peer(Script())
    config = config_for([dropping, good], ca_file=ca_file, command_timeout=3 * TIMEOUT)
    result, took = await timed(config)
    assert result.status is Status.DELIVERED, result.reason
    assert len(good.transactions) == 1
    assert TIMEOUT <= result.setup_seconds <= took
