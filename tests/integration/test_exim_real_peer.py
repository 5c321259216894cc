"""relaymail between real Exim 4.96 peers: Exim as the sending client, Exim as the next hop.

Exim is a strict, honest peer: as a client it writes the message,
the final "." and QUIT in one write and half-closes before it reads the replies; as a server
it logs how every session ended ("closed by QUIT" or "lost").
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from relaymail.delivery import Status
from tests.integration.conftest import config_for, deliver
from tests.integration.daemon_process import free_port
from tests.integration.test_8bitmime import EIGHT_BIT, decoded
from tests.integration.test_daemon import make_config, start_daemon, wait_for
from tests.peers.exim_config import EximOptions, Outcome, Relay, StartTLS
from tests.peers.smtp_server import Script

MESSAGE = b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: from exim\r\n\r\nHello.\r\n"


def route(peer: Any) -> str:
    return f"{peer.host}:{peer.port}"


async def session_ends(peer: Any) -> tuple[int, int]:
    """(sessions closed by QUIT, sessions lost) among those Exim received.

    Exim's per-connection process logs how its session ended after the last reply, so
    the log is read once every session it opened has its end line (or after 10 s).
    One lost session is the fixture's readiness probe (connect, then close without a
    word); Exim logs it whenever that session's process ends, before or after ours.
    """
    async with asyncio.timeout(10):
        while True:
            lines = [line for line in peer.mainlog().splitlines() if "SMTP connection from" in line]
            opened = sum("connection count =" in line for line in lines)
            quits = sum("closed by QUIT" in line for line in lines)
            lost = sum(" lost" in line or "unexpected disconnection" in line for line in lines)
            if quits + lost >= opened:
                return quits, lost - 1
            await asyncio.sleep(0.05)


async def test_exim_sending_through_relaymail_delivers_one_copy_and_exim_sees_the_250(
    exim: Any, smtp_peer: Any, ca_file: Path, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script())
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": [route(sink)]})
    daemon = await start_daemon(tmp_path, config, port)
    try:
        client = await asyncio.to_thread(exim, EximOptions(relay=Relay("127.0.0.1", port)))
        message_id = await asyncio.to_thread(client.send, "a@sender.test", ["u@dest.test"], MESSAGE)
        await wait_for(lambda: "status=sent" in daemon.text(), what="delivery")
        assert client.outcome(message_id) is Outcome.DELIVERED, client.mainlog()
        assert await asyncio.to_thread(client.queue_count) == 0
        assert "Remote host closed connection" not in client.mainlog()
        # A forced queue run has nothing to send again.
        await asyncio.to_thread(client.flush)
    finally:
        assert await daemon.stop() == 0
    assert [t.recipients for t in sink.transactions] == [("u@dest.test",)]
    log = daemon.text()
    assert log.count("relaymail.accepted: ") == 1
    assert log.count("status=sent") == 1
    assert "Traceback" not in log


async def test_454_to_starttls_with_fallback_off_defers_and_quits(exim: Any, ca_file: Path) -> None:
    peer = await asyncio.to_thread(exim, EximOptions(starttls=StartTLS.MISSING_KEYS))
    config = config_for([route(peer)], ca_file=ca_file, level="may", fallback=False)
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    assert await session_ends(peer) == (1, 0), peer.mainlog()


async def test_454_to_starttls_with_fallback_on_is_the_seed_case_delivered_in_clear(
    exim: Any, ca_file: Path
) -> None:
    peer = await asyncio.to_thread(exim, EximOptions(starttls=StartTLS.MISSING_KEYS))
    [result] = await deliver(config_for([route(peer)], ca_file=ca_file, level="may"))
    assert result.status is Status.DELIVERED and not result.tls.used
    await asyncio.to_thread(peer.settle)
    assert len(peer.received_messages()) == 1


async def test_a_certificate_verify_refuses_is_followed_by_quit_over_tls(
    exim: Any, ca_file: Path
) -> None:
    options = EximOptions(starttls=StartTLS.OK, cert_names=("wrong.example.test",))
    peer = await asyncio.to_thread(exim, options)
    [result] = await deliver(config_for([route(peer)], ca_file=ca_file, level="verify"))
    assert result.status is Status.DEFERRED
    assert result.attempts and result.attempts[-1].tls
    assert await session_ends(peer) == (1, 0), peer.mainlog()
    assert peer.received_messages() == []


async def test_encrypt_against_exim_without_starttls_defers_and_quits(
    exim: Any, ca_file: Path
) -> None:
    peer = await asyncio.to_thread(exim, EximOptions(starttls=StartTLS.OFF))
    [result] = await deliver(config_for([route(peer)], ca_file=ca_file, level="encrypt"))
    assert result.status is Status.DEFERRED
    assert await session_ends(peer) == (1, 0), peer.mainlog()
    assert peer.received_messages() == []


async def test_exim_without_8bitmime_receives_7bit_that_decodes_the_same(
    exim: Any, ca_file: Path
) -> None:
    peer = await asyncio.to_thread(exim, EximOptions(eight_bit_mime=False))
    config = config_for([route(peer)], ca_file=ca_file, level="none")
    [result] = await deliver(config, data=EIGHT_BIT)
    assert result.status is Status.DELIVERED
    await asyncio.to_thread(peer.settle)
    [stored] = peer.received_messages()
    assert stored.isascii()
    assert decoded(stored) == decoded(EIGHT_BIT)
