"""REQUIRETLS (RFC 8689) at the inbound server: offered after TLS only, taken over TLS only.

Real sockets on 127.0.0.1: a raw client for the MAIL parameter (swaks has no option
for MAIL parameters), swaks for what EHLO offers in clear and after STARTTLS.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from relaymail.listener_settings import ListenerMode
from relaymail.message import Envelope
from tests.integration.inbound_harness import MESSAGE, USER, Listen, swaks

SENDER, RECIPIENT = "a@client.example", "b@elsewhere.example"


def _offered(ehlo: Any) -> list[str]:
    return [line[4:] for line in ehlo.lines[1:]]


async def test_requiretls_is_offered_after_starttls_and_not_before(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)

    before = await client.command("EHLO client.example")
    await client.starttls(client_tls)
    after = await client.command("EHLO client.example")

    assert "REQUIRETLS" not in _offered(before) and "STARTTLS" in _offered(before)
    assert "REQUIRETLS" in _offered(after) and "STARTTLS" not in _offered(after)


async def test_swaks_sees_requiretls_only_inside_tls(listen: Listen) -> None:
    handle, _ = await listen()
    clear = await swaks(handle.port, "--quit-after", "EHLO")
    tls = await swaks(handle.port, "--tls", "--quit-after", "EHLO")

    assert clear.returncode == 0 and tls.returncode == 0, (clear.output, tls.output)
    assert not clear.saw("250-REQUIRETLS") and not clear.saw("250 REQUIRETLS")
    assert tls.saw("250-REQUIRETLS") or tls.saw("250 REQUIRETLS"), tls.output


async def test_mail_with_requiretls_over_starttls_is_queued_with_the_flag(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.hello_over_tls(client_tls)

    mail = await client.command(f"MAIL FROM:<{SENDER}> REQUIRETLS")
    rcpt = await client.command(f"RCPT TO:<{RECIPIENT}>")
    assert (mail.code, rcpt.code, (await client.command("DATA")).code) == (250, 250, 354)
    client.send(MESSAGE + b".\r\n")
    final = await client.reply()
    # A second transaction on the same session, without the parameter, is not flagged.
    _, plain = await client.send_message(SENDER, [RECIPIENT], MESSAGE)

    assert (final.code, plain.code) == (250, 250)
    assert [envelope for envelope, _ in spool.messages] == [
        Envelope(SENDER, (RECIPIENT,), requiretls=True),
        Envelope(SENDER, (RECIPIENT,), requiretls=False),
    ]


@pytest.mark.parametrize(
    ("over_tls", "parameters", "refusal"),
    [
        (False, "REQUIRETLS", (530, "5.7.10")),  # RFC 5248's "Encryption needed"
        (True, "REQUIRETLS=YES", (501, "5.5.4")),  # it takes no value
        (True, "REQUIRETLS REQUIRETLS", (501, "5.5.4")),
    ],
)
async def test_requiretls_in_clear_or_malformed_is_refused_and_the_session_goes_on(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, over_tls: bool, parameters: str,
    refusal: tuple[int, str],
) -> None:  # fmt: skip
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    if over_tls:
        await client.hello_over_tls(client_tls)
    else:
        await client.command("EHLO client.example")

    refused = await client.command(f"MAIL FROM:<{SENDER}> {parameters}")
    _, plain = await client.send_message(SENDER, [RECIPIENT], MESSAGE)

    assert (refused.code, refused.text.split()[0]) == refusal
    assert plain.code == 250
    assert [envelope.requiretls for envelope, _ in spool.messages] == [False]


async def test_implicit_tls_offers_and_takes_requiretls(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, spool = await listen(mode=ListenerMode.SMTPS)
    client, _ = await clients(handle.port, client_tls)

    ehlo = await client.command("EHLO client.example")
    assert (await client.login()).code == 235  # the port of submitters (RFC 8314)
    mail = await client.command(f"MAIL FROM:<{USER}> requiretls")
    await client.command(f"RCPT TO:<{RECIPIENT}>")
    await client.command("DATA")
    client.send(MESSAGE + b".\r\n")
    final = await client.reply()

    assert "REQUIRETLS" in _offered(ehlo)
    assert (mail.code, final.code) == (250, 250)
    assert [envelope.requiretls for envelope, _ in spool.messages] == [True]
