"""Header fix-up over real SMTP on 127.0.0.1: submission adds Date and Message-ID, relay does not.

What reached the spool is compared with what the client sent, byte for byte
after the Received: header the server prepends.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import ssl
from typing import Any

import pytest

from relaymail.listener_settings import ListenerMode
from tests.integration.inbound_harness import ELSEWHERE, HOSTNAME, MESSAGE, USER, Listen

BARE = b"From: a@client.example\r\nTo: b@inbound.example\r\nSubject: bare\r\n\r\nHello.\r\n"
DATED = b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <given@client.example>\r\n" + MESSAGE


def after_trace(data: bytes) -> bytes:
    """The stored data without the one Received: header in front (a first line and folds)."""
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"Received: ")
    rest = 1
    while lines[rest][:1] == b"\t":
        rest += 1
    return b"\r\n".join(lines[rest:])


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def assert_fixed_up(stored: bytes, sent: bytes) -> None:
    message = after_trace(stored)
    assert message.endswith(sent) and message != sent
    headers = parsed(message)
    assert email.utils.parsedate_to_datetime(headers["Date"]).tzinfo is not None
    assert headers["Message-ID"].endswith(f"@{HOSTNAME}>")
    assert len(headers.get_all("Date")) == len(headers.get_all("Message-ID")) == 1


async def test_relayed_mail_from_another_mta_is_left_alone(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO mta.client.example")
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], BARE)
    assert final.code == 250
    [(_, stored)] = spool.messages
    assert after_trace(stored) == BARE


async def submit(
    listen: Listen, clients: Any, tls: ssl.SSLContext, data: bytes, **listener: Any
) -> bytes:
    """``data`` sent by an authenticated client over TLS (STARTTLS, or implicit on smtps)."""
    handle, spool = await listen(**listener)
    if listener.get("mode") is ListenerMode.SMTPS:
        client, _ = await clients(handle.port, tls)
    else:
        client, _ = await clients(handle.port)
        await client.command("EHLO client.example")
        await client.starttls(tls)
    await client.command("EHLO client.example")
    assert (await client.login()).code == 235
    _, final = await client.send_message(USER, ["b@elsewhere.example"], data)
    assert final.code == 250
    [(_, stored)] = spool.messages
    return bytes(stored)


@pytest.mark.parametrize("mode", [ListenerMode.SUBMISSION, ListenerMode.SMTPS])
async def test_submitted_mail_gets_date_and_message_id(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, mode: ListenerMode
) -> None:
    assert_fixed_up(await submit(listen, clients, client_tls, BARE, mode=mode), BARE)


async def test_authenticated_client_on_a_relay_listener_gets_them_too(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    stored = await submit(listen, clients, client_tls, BARE, relay_networks=ELSEWHERE)
    assert_fixed_up(stored, BARE)


async def test_submitted_mail_with_its_own_date_and_message_id_is_unchanged(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    stored = await submit(listen, clients, client_tls, DATED, mode=ListenerMode.SMTPS)
    assert after_trace(stored) == DATED
