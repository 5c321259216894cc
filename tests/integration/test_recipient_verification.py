"""Recipient verification for relay_domains against a real next hop on loopback.

The next hop is tests/peers/smtp_server.py scripted to know one user and answer 550 for
the rest; the engine that probes it is the delivery engine, over STARTTLS as the policy
says. The client is outside relay_networks, with a forged sender: whatever it sends to
an unknown recipient must be refused at RCPT, so no bounce can ever be written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relaymail.config import RecipientVerification, VerifyMode
from relaymail.delivery import DeliveryEngine, RecipientResult, Status
from relaymail.inbound.recipient_verification import RecipientVerifier, Verdict, VerdictCache
from tests.integration.conftest import config_for
from tests.integration.inbound_harness import ELSEWHERE, LOOPBACK, Client, Listen
from tests.peers.smtp_server import Script, SMTPPeer, SMTPPeerFactory, Stage

DOMAIN = "plain.test"
KNOWN, UNKNOWN = f"known@{DOMAIN}", f"nobody@{DOMAIN}"
NEXT_HOP = Script(rcpt_replies={KNOWN: "250 2.1.5 Ok"}, rcpt_reply="550 5.1.1 No such user")
FORGED = "victim@innocent.example"
MESSAGE = b"From: victim@innocent.example\r\nSubject: spam\r\n\r\nBuy.\r\n"


@pytest.fixture
async def engine_for(ca_file: Path) -> AsyncIterator[Callable[..., DeliveryEngine]]:
    engines: list[DeliveryEngine] = []

    def make(peers: list[SMTPPeer | str], **delivery: Any) -> DeliveryEngine:
        engine = DeliveryEngine(config_for(peers, ca_file=ca_file, domain=DOMAIN, **delivery))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


def verifier(
    engine: DeliveryEngine, directory: Path, **settings: Any
) -> RecipientVerifier:
    config = RecipientVerification(**settings)
    return RecipientVerifier(
        config, engine.verify_recipient, VerdictCache(directory, config.cache_size)
    )


def rcpt_lines(peer: SMTPPeer) -> list[str]:
    return [line for line in peer.lines() if line.upper().startswith("RCPT")]


async def outside_client(listen: Listen, clients: Any, check: RecipientVerifier) -> Client:
    handle, _ = await listen(relay_networks=ELSEWHERE, relay_domains=(DOMAIN,), verifier=check)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    assert (await client.command(f"MAIL FROM:<{FORGED}>")).code == 250
    return client


async def test_the_probe_is_mail_rcpt_rset_over_tls_and_never_data(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine]
) -> None:
    peer = await smtp_peer(NEXT_HOP)
    engine = engine_for([peer])
    unknown = await engine.verify_recipient(UNKNOWN)
    known = await engine.verify_recipient(KNOWN)
    assert (unknown.status, known.status) == (Status.BOUNCED, Status.DELIVERED)
    assert unknown.reply == "550 5.1.1 No such user"
    verbs = [line.verb for line in peer.transcript if line.tls]
    assert "DATA" not in verbs
    assert [line.text for line in peer.transcript if line.verb in ("MAIL", "RCPT", "RSET")][:3] == [
        "MAIL FROM:<>", f"RCPT TO:<{UNKNOWN}>", "RSET",
    ]  # fmt: skip
    assert all(line.tls for line in peer.transcript if line.verb in ("MAIL", "RCPT"))
    assert peer.transactions == []


async def test_a_forged_sender_to_an_unknown_recipient_gets_550_and_nothing_is_queued(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], listen: Listen,
    clients: Any, tmp_path: Path,
) -> None:  # fmt: skip
    peer = await smtp_peer(NEXT_HOP)
    check = verifier(engine_for([peer]), tmp_path)
    handle, spool = await listen(
        relay_networks=ELSEWHERE, relay_domains=(DOMAIN,), verifier=check
    )
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    replies, final = await client.send_message(FORGED, [UNKNOWN], MESSAGE)
    assert [(r.code, r.text) for r in replies[1:]] == [
        (550, f"5.1.1 <{UNKNOWN}>: Recipient address rejected: undeliverable address"),
        (554, "5.5.1 Error: no valid recipients"),
    ]
    assert spool.messages == []
    _, final = await client.send_message(FORGED, [KNOWN], MESSAGE)
    assert final.code == 250
    assert [envelope.recipients for envelope, _ in spool.messages] == [(KNOWN,)]
    await check.close()


async def test_cached_verdicts_are_not_probed_again_and_survive_a_restart(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], listen: Listen,
    clients: Any, tmp_path: Path,
) -> None:  # fmt: skip
    peer = await smtp_peer(NEXT_HOP)
    engine = engine_for([peer])
    check = verifier(engine, tmp_path)
    client = await outside_client(listen, clients, check)
    for _ in range(3):
        assert (await client.command(f"RCPT TO:<{UNKNOWN}>")).code == 550
        assert (await client.command(f"RCPT TO:<{KNOWN}>")).code == 250
    assert rcpt_lines(peer) == [f"RCPT TO:<{UNKNOWN}>", f"RCPT TO:<{KNOWN}>"]
    await check.close()
    # A new verifier on the same directory: the verdicts come from recipients.db.
    restarted = verifier(engine, tmp_path)
    assert await restarted.verdict(UNKNOWN) is Verdict.REJECTED
    assert await restarted.verdict(KNOWN) is Verdict.ACCEPTED
    assert len(rcpt_lines(peer)) == 2
    await restarted.close()


async def test_negative_verdicts_expire_sooner_than_positive_ones(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], tmp_path: Path
) -> None:
    peer = await smtp_peer(NEXT_HOP)
    check = verifier(engine_for([peer]), tmp_path, negative_ttl=0.05)
    assert await check.verdict(UNKNOWN) is Verdict.REJECTED
    assert await check.verdict(KNOWN) is Verdict.ACCEPTED
    while await check.verdict(UNKNOWN) is Verdict.REJECTED and len(rcpt_lines(peer)) < 3:
        await asyncio.sleep(0.02)  # until the negative entry expired and was probed again
    await check.verdict(KNOWN)
    assert rcpt_lines(peer).count(f"RCPT TO:<{KNOWN}>") == 1
    assert rcpt_lines(peer).count(f"RCPT TO:<{UNKNOWN}>") == 2
    await check.close()


async def test_an_unreachable_next_hop_gets_450_and_is_not_cached(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], listen: Listen,
    clients: Any, tmp_path: Path,
) -> None:  # fmt: skip
    gone = await smtp_peer(NEXT_HOP)
    address = f"127.0.0.1:{gone.port}"
    await gone.stop()
    check = verifier(engine_for([address]), tmp_path)
    client = await outside_client(listen, clients, check)
    reply = await client.command(f"RCPT TO:<{KNOWN}>")
    assert (reply.code, reply.text) == (
        450, f"4.1.1 <{KNOWN}>: Recipient address rejected: unverified address"
    )  # fmt: skip
    assert (await client.command("DATA")).code == 554
    await check.close()


async def test_a_slow_next_hop_gets_450_first_and_its_answer_on_the_retry(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], listen: Listen,
    clients: Any, tmp_path: Path,
) -> None:  # fmt: skip
    peer = await smtp_peer(replace(NEXT_HOP, delays={Stage.RCPT: 0.5}))
    check = verifier(engine_for([peer]), tmp_path, wait=0.05)
    client = await outside_client(listen, clients, check)
    assert (await client.command(f"RCPT TO:<{UNKNOWN}>")).code == 450
    codes = []
    while not codes or codes[-1] == 450:
        codes.append((await client.command(f"RCPT TO:<{UNKNOWN}>")).code)
        await asyncio.sleep(0.05)
    assert set(codes) <= {450, 550} and codes[-1] == 550
    assert rcpt_lines(peer) == [f"RCPT TO:<{UNKNOWN}>"]  # one probe, however many retries
    await check.close()


async def test_a_probe_past_its_deadline_is_unknown(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], tmp_path: Path
) -> None:
    peer = await smtp_peer(replace(NEXT_HOP, delays={Stage.RCPT: 30.0}))
    check = verifier(engine_for([peer]), tmp_path, wait=5.0, probe_timeout=0.2)
    assert await check.verdict(UNKNOWN) is Verdict.UNKNOWN
    await check.close()


async def test_trusted_and_authenticated_clients_are_not_verified(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], listen: Listen,
    clients: Any, tmp_path: Path,
) -> None:  # fmt: skip
    peer = await smtp_peer(NEXT_HOP)
    check = verifier(engine_for([peer]), tmp_path)
    handle, _ = await listen(relay_networks=LOOPBACK, relay_domains=(DOMAIN,), verifier=check)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command(f"MAIL FROM:<{FORGED}>")
    assert (await client.command(f"RCPT TO:<{UNKNOWN}>")).code == 250
    assert peer.connections == 0
    await check.close()


async def test_with_a_recipients_list_only_listed_addresses_exist_and_nothing_is_probed(
    smtp_peer: SMTPPeerFactory, listen: Listen, clients: Any, tmp_path: Path
) -> None:
    listed = tmp_path / "relay-recipients"
    listed.write_text(f"# who exists\n{KNOWN}\n@Sub.{DOMAIN}\n")
    settings = RecipientVerification(mode=VerifyMode.LIST, recipients_file=listed)

    async def no_probe(address: str, sender: str) -> RecipientResult:
        raise AssertionError("a list never probes")

    check = RecipientVerifier.for_config(settings, no_probe, tmp_path)
    handle, _ = await listen(
        relay_networks=ELSEWHERE, relay_domains=(DOMAIN, f".{DOMAIN}"), verifier=check
    )
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command(f"MAIL FROM:<{FORGED}>")
    codes = [
        (await client.command(f"RCPT TO:<{address}>")).code
        for address in (KNOWN, "KNOWN@PLAIN.TEST", UNKNOWN, f"any@sub.{DOMAIN}")
    ]
    assert codes == [250, 250, 550, 250]
    await check.close()


async def test_probes_past_max_probes_get_unknown_without_a_probe(
    smtp_peer: SMTPPeerFactory, engine_for: Callable[..., DeliveryEngine], tmp_path: Path
) -> None:
    peer = await smtp_peer(replace(NEXT_HOP, delays={Stage.RCPT: 0.5}))
    check = verifier(engine_for([peer]), tmp_path, wait=0.01, max_probes=1)
    assert await check.verdict(UNKNOWN) is Verdict.UNKNOWN  # its probe goes on
    assert await check.verdict(KNOWN) is Verdict.UNKNOWN  # none for this one
    while await check.verdict(UNKNOWN) is Verdict.UNKNOWN:
        await asyncio.sleep(0.05)
    assert rcpt_lines(peer) == [f"RCPT TO:<{UNKNOWN}>"]
    await check.close()


def test_the_verdict_cache_is_bounded_in_memory_and_on_disk(tmp_path: Path) -> None:
    cache = VerdictCache(tmp_path, size=10)
    for n in range(600):
        cache.put(f"u{n}@{DOMAIN}", Verdict.REJECTED, 1e12 + n)
    assert len(cache) == 10
    stored = sqlite3.connect(tmp_path / "recipients.db").execute("SELECT count(*) FROM verdicts")
    assert stored.fetchone()[0] <= 10 + 256  # pruned to the size every 256 writes
    cache.close()
    reopened = VerdictCache(tmp_path, size=10)
    assert reopened.get(f"u599@{DOMAIN}", 0.0) is Verdict.REJECTED
    assert reopened.get(f"u0@{DOMAIN}", 0.0) is None
    reopened.close()
