"""Sender login binding over real STARTTLS with AUTH: swaks and a raw client on 127.0.0.1.

An authenticated user sends only as the addresses its [users] entry gives it: the MAIL
FROM at MAIL, every From: and Sender: address at the end of DATA.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from relaymail.accounts import UserAccount, parse_users
from relaymail.address_set import AddressSet
from relaymail.listener_settings import ListenerMode
from relaymail.passwords import PasswordHash, hash_password
from tests.integration.inbound_harness import Client, Listen, swaks

PASSWORD = "alice's password"
HASH = hash_password(PASSWORD, log2_n=10)
ALICE = {
    "alice": UserAccount(
        PasswordHash.parse(HASH),
        AddressSet.of(("alice@example.org", "@example.net", "@bücher.example")),
    )
}


def message(*headers: str) -> bytes:
    return ("\r\n".join(headers) + "\r\nSubject: hi\r\n\r\nHello.\r\n").encode()


async def submission(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, **settings: Any
) -> tuple[Client, Any]:
    handle, spool = await listen(mode=ListenerMode.SUBMISSION, accounts=ALICE, **settings)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    assert (await client.login("alice", PASSWORD)).code == 235
    return client, spool


async def test_swaks_sends_as_an_owned_address_over_starttls(listen: Listen) -> None:
    handle, spool = await listen(mode=ListenerMode.SUBMISSION, accounts=ALICE)
    run = await swaks(
        handle.port, "--tls", "--auth", "PLAIN", "--auth-user", "alice",
        "--auth-password", PASSWORD, "--from", "alice@example.org", "--to", "b@elsewhere.example",
        "--header", "From: Alice <alice@example.org>",
    )  # fmt: skip
    assert run.returncode == 0, run.output
    assert [envelope.sender for envelope, _ in spool.messages] == ["alice@example.org"]


async def test_swaks_gets_553_for_an_envelope_sender_the_login_does_not_own(
    listen: Listen,
) -> None:
    handle, spool = await listen(mode=ListenerMode.SUBMISSION, accounts=ALICE)
    run = await swaks(
        handle.port, "--tls", "--auth", "LOGIN", "--auth-user", "alice",
        "--auth-password", PASSWORD, "--from", "ceo@bank.example", "--to", "b@elsewhere.example",
    )  # fmt: skip
    assert run.returncode != 0
    assert run.saw("553 5.7.1 Sender address <ceo@bank.example> is not owned by user alice")
    assert spool.messages == []


@pytest.mark.parametrize(
    "headers",
    [
        ("From: CEO <ceo@bank.example>",),
        ("From: alice@example.org, ceo@bank.example",),
        ("From: alice@example.org", "from: ceo@bank.example"),
        ("From: alice@example.org", "Sender: ceo@bank.example"),
        ("From: \"alice@example.org\" <ceo@bank.example>",),
        ("From: <alice@example.org> <ceo@bank.example>",),  # read only with a defect
        ("From: ceo",),
        ("From: alice@example.org\r\n <ceo@bank.example>",),
        # Fields that a lax parser would miss and another reader would see:
        ("From: alice@example.org", "Sender : ceo@bank.example"),  # RFC 5322 obs-optional
        ("From: alice@example.org", "not a field", "From: ceo@bank.example"),
        (" From: ceo@bank.example",),
        ("Subject: a\rFrom: ceo@bank.example",),
        ("Subject: a\x0bFrom: ceo@bank.example",),
        ("From: alice@example.org\x00ceo@bank.example",),
    ],
)
async def test_a_from_or_sender_header_the_login_does_not_own_gets_553_after_data(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, headers: tuple[str, ...]
) -> None:
    client, spool = await submission(listen, clients, client_tls)
    replies, final = await client.send_message(
        "alice@example.org", ["b@elsewhere.example"], message(*headers)
    )
    assert [r.code for r in replies] == [250, 250, 354]
    assert (final.code, final.text[:5]) == (553, "5.7.1")
    assert spool.messages == []


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        ("anyone@example.net", ("From: Anyone <anyone@EXAMPLE.NET>",)),
        ("Alice@Example.Org", ("From: alice@example.org", "Sender: x@example.net")),
        (
            "info@xn--bcher-kva.example",
            ("From: =?utf-8?q?B=C3=BCcher?= <info@XN--BCHER-KVA.example>",),
        ),
        ("", ("From: alice@example.org",)),
        ("alice@example.org", ("To: b@elsewhere.example",)),  # no From: nothing to check
    ],
)
async def test_owned_addresses_match_by_domain_case_idna_and_the_at_domain_form(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, sender: str,
    headers: tuple[str, ...],
) -> None:  # fmt: skip
    client, spool = await submission(listen, clients, client_tls)
    _, final = await client.send_message(sender, ["b@elsewhere.example"], message(*headers))
    assert final.code == 250, final
    assert len(spool.messages) == 1


async def test_international_from_is_matched_in_its_u_label_form(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    client, spool = await submission(listen, clients, client_tls)
    assert (await client.command("MAIL FROM:<info@bücher.example> SMTPUTF8")).code == 250
    assert (await client.command("RCPT TO:<b@elsewhere.example>")).code == 250
    assert (await client.command("DATA")).code == 354
    client.send(message("From: info@BÜCHER.example") + b".\r\n")
    assert (await client.reply()).code == 250
    assert len(spool.messages) == 1


async def test_binding_off_lets_the_login_send_as_anyone(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    client, spool = await submission(listen, clients, client_tls, sender_login_binding=False)
    _, final = await client.send_message(
        "ceo@bank.example", ["b@elsewhere.example"], message("From: ceo@bank.example")
    )
    assert final.code == 250
    assert len(spool.messages) == 1


async def test_unauthenticated_relay_clients_are_not_bound(listen: Listen, clients: Any) -> None:
    handle, spool = await listen(accounts=ALICE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message(
        "ceo@bank.example", ["b@elsewhere.example"], message("From: ceo@bank.example")
    )
    assert final.code == 250
    assert [envelope.sender for envelope, _ in spool.messages] == ["ceo@bank.example"]


def test_a_user_without_addresses_sends_as_its_login_or_login_at_the_local_domain() -> None:
    users = parse_users(
        {
            "alice": HASH,
            "carol@example.com": HASH,
            "dave": {"password_hash": HASH, "addresses": []},
        },
        "local.example",
    )
    alice, carol = users["alice"].senders, users["carol@example.com"].senders
    dave = users["dave"].senders
    assert alice.matches("alice@local.example") and not alice.matches("alice@example.com")
    assert carol.matches("Carol@EXAMPLE.com") and not carol.matches("carol@local.example")
    assert dave.matches("dave@local.example") is False


@pytest.mark.parametrize(
    "author",
    [
        # Values the stdlib's parser raises on (IndexError, AttributeError, ...).
        ":", "<", "..[", ",g:<a@b>;a<(<", "(" * 2000 + ")" * 2000 + " <alice@example.org>",
        # Its time and memory grow faster than the value: 840 KB of this took 23 GB.
        "=?utf-8?q?a?= " * 60_000 + "<alice@example.org>",
    ],
)
async def test_a_from_the_parser_cannot_read_gets_553_not_a_451_or_the_daemons_memory(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, author: str
) -> None:
    client, spool = await submission(listen, clients, client_tls, max_message_size=2 << 20)
    _, final = await client.send_message(
        "alice@example.org", ["b@elsewhere.example"], message(f"From: {author}")
    )
    assert (final.code, final.text[:5]) == (553, "5.7.1")
    assert (await client.command("NOOP")).code == 250
    assert spool.messages == []
