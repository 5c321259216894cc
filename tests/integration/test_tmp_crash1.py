"""kill -9 of the daemon under load loses no accepted message.

Rounds of: start `relaymail serve`, submit over SMTP from several connections,
kill -9 at a random moment. Then one last start drains the queue. Every
message that got a 250 must reach the receiving server; a message may arrive
twice only inside the window between the remote 250 and our commit.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import aiosmtplib
import pytest

from tests.integration.conftest import hop
from tests.integration.daemon_process import Daemon, free_port, write_toml
from tests.peers.smtp_server import Script

pytestmark = pytest.mark.timeout(180)

ROUNDS = 5
SENDERS = 4


async def submit_until_refused(
    port: int, tokens: list[str], accepted: set[str], start: int
) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5)
    try:
        await client.connect()
        for n in range(start, start + 100_000):
            token = f"kill-{n}"
            message = f"From: a@src.test\r\nTo: u@dest.test\r\nSubject: {token}\r\n\r\nbody\r\n"
            tokens.append(token)
            await client.sendmail("a@src.test", ["u@dest.test"], message)
            accepted.add(token)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return  # the daemon died under us: what was not acknowledged is not ours to keep
    finally:
        client.close()


async def test_kill_9_under_load_loses_nothing(smtp_peer, ca_file, tmp_path: Path):
    sink = await smtp_peer(Script())
    port = free_port()
    config = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 5.0},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": tmp_path / "queue", "retry": ["0.2s"]}, "server": {"processes": 1},
        "routes": {"dest.test": [hop(sink)]},
        "listener": [{"address": f"127.0.0.1:{port}", "relay_networks": ["127.0.0.0/8"]}],
    })  # fmt: skip
    rng = random.Random(20261129)
    sent: list[str] = []
    accepted: set[str] = set()
    for round_number in range(ROUNDS):
        daemon = Daemon(config, port, tmp_path / f"serve-{round_number}.log")
        await daemon.start()
        senders = [
            asyncio.create_task(
                submit_until_refused(port, sent, accepted, (round_number * SENDERS + i) * 100_000)
            )
            for i in range(SENDERS)
        ]
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        await daemon.kill()
        await asyncio.wait_for(asyncio.gather(*senders), 30)

    final = Daemon(config, port, tmp_path / "serve-final.log")
    await final.start()

    def delivered() -> list[str]:
        subjects = []
        for transaction in sink.transactions:
            if transaction.accepted and (m := re.search(rb"Subject: (kill-\d+)", transaction.data)):
                subjects.append(m.group(1).decode())
        return subjects

    try:
        async with asyncio.timeout(60):
            while not accepted <= set(delivered()):
                await asyncio.sleep(0.1)
    finally:
        await final.stop()
    arrived = delivered()
    lost = accepted - set(arrived)
    duplicates = len(arrived) - len(set(arrived))
    print(
        f"\nkill -9 x{ROUNDS}: submitted {len(sent)}, accepted {len(accepted)}, "
        f"delivered {len(set(arrived))}, lost {len(lost)}, duplicates {duplicates}"
    )
    assert len(accepted) > 100, "the load was too light to prove anything"
    assert not lost
    # Unacknowledged messages may or may not have been queued; nothing else may arrive.
    assert set(arrived) <= set(sent)
