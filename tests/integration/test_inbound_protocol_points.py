"""RFC details of the inbound server over real sockets: postmaster, source routes, long lines,
and the one log line every refusal gets."""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any

import pytest

from relaymail.config import parse_config
from relaymail.errors import ConfigError
from relaymail.listener_settings import ListenerMode, LongLines
from relaymail.observe import Accepted, LogEvent, Rejected, RejectReason
from relaymail.observe.render import text_line
from tests.integration.inbound_harness import ELSEWHERE, HOSTNAME, Client, Listen

SENDER = "a@client.example"


async def open_session(
    mode: ListenerMode, handle: Any, clients: Any, client_tls: ssl.SSLContext
) -> Client:
    """A session ready for MAIL on a listener of ``mode`` (TLS and AUTH where it needs them)."""
    client, greeting = await clients(
        handle.port, client_tls if mode is ListenerMode.SMTPS else None
    )
    assert greeting.code == 220
    await client.command("EHLO client.example")
    if mode is ListenerMode.SUBMISSION:
        await client.starttls(client_tls)
        await client.command("EHLO client.example")
    if mode is not ListenerMode.RELAY:
        assert (await client.login()).code == 235
    return client


# --------------------------------------------------------------------------- postmaster


@pytest.mark.parametrize(
    ("postmaster", "delivered_to"),
    [(None, f"postmaster@{HOSTNAME}"), ("admin@example.org", "admin@example.org")],
)
async def test_rcpt_to_postmaster_without_domain_is_accepted_from_anyone(
    listen: Listen, clients: Any, postmaster: str | None, delivered_to: str
) -> None:
    handle, spool = await listen(relay_networks=ELSEWHERE, relay_domains=(), postmaster=postmaster)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    replies, final = await client.send_message(SENDER, ["Postmaster"], b"Subject: hi\r\n\r\nx\r\n")
    assert [r.code for r in replies] == [250, 250, 354] and final.code == 250
    [(envelope, _)] = spool.messages
    assert envelope.recipients == (delivered_to,)


async def test_an_unconfigured_postmaster_is_named_in_the_log_at_start(
    listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relaymail.server")
    await listen()
    assert any(f"queued for postmaster@{HOSTNAME}" in r.getMessage() for r in caplog.records)


def test_local_postmaster_is_read_and_checked_and_reaches_every_listener() -> None:
    config = parse_config(
        {"local": {"postmaster": "admin@example.org"}, "listener": [{"address": "[::1]:25"}]}
    )
    assert [s.postmaster_address for s in config.listeners()] == ["admin@example.org"]
    for bad in ("admin", 5, "a b@example.org"):
        with pytest.raises(ConfigError) as error:
            parse_config({"local": {"postmaster": bad}})
        assert error.value.key == "local.postmaster"
    with pytest.raises(ConfigError) as error:
        parse_config({"local": {"hostmaster": "a@b.example"}})
    assert error.value.key.startswith("local")


# --------------------------------------------------------------------------- source routes


@pytest.mark.parametrize("mode", list(ListenerMode))
async def test_a_source_route_is_accepted_and_ignored_on_every_listener(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, mode: ListenerMode
) -> None:
    handle, spool = await listen(mode=mode)
    client = await open_session(mode, handle, clients, client_tls)
    sender = "alice@submit.example" if mode is not ListenerMode.RELAY else SENDER
    replies, final = await client.send_message(
        sender, ["@a.example,@b.example:user@c.example"], b"Subject: r\r\n\r\nx\r\n"
    )
    assert [r.code for r in replies] == [250, 250, 354] and final.code == 250
    [(envelope, _)] = spool.messages
    assert envelope.recipients == ("user@c.example",)


# --------------------------------------------------------------------------- long lines


def unfolded_header(data: bytes) -> bytes:
    header = data.split(b"\r\n\r\n", 1)[0]
    return re.sub(rb"\r\n(?=[ \t])", b"", header)


async def test_lines_over_998_octets_are_folded_before_queueing_and_logged(
    listen: Listen, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, spool = await listen()
    subject = b"Subject: " + b" ".join(b"word%d" % i for i in range(400))
    html = "<p>" + "é" * 1500 + "</p>"
    message = subject + b"\r\n\r\n" + html.encode() + b"\r\n..starts with a dot\r\n"  # stuffed
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message(SENDER, ["b@elsewhere.example"], message)
    assert final.code == 250
    [(_, stored)] = spool.messages
    stored = stored.split(b"\r\n", 1)[1] if stored.startswith(b"Received:") else stored
    body = stored.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) + 2 for line in stored.split(b"\r\n")) <= 1000
    assert unfolded_header(stored).endswith(subject)  # folded at spaces: the same field
    assert body.replace(b"\r\n", b"").decode() == html + ".starts with a dot"
    [accepted] = [e for e in events(caplog) if isinstance(e, Accepted)]
    assert accepted.folded == 2 and "folded=2" in text_line(accepted)


async def test_long_lines_refuse_keeps_the_500(listen: Listen, clients: Any) -> None:
    handle, spool = await listen(long_lines=LongLines.REFUSE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    message = b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n"
    _, final = await client.send_message(SENDER, ["b@elsewhere.example"], message)
    assert (final.code, final.text[:6]) == (500, "5.5.2 ")
    assert spool.messages == []


def test_long_lines_is_a_listener_key_with_two_values() -> None:
    listener = {"address": "127.0.0.1:2525", "long_lines": "refuse"}
    [settings] = parse_config({"listener": [listener]}).listeners()
    assert settings.long_lines is LongLines.REFUSE
    with pytest.raises(ConfigError) as error:
        parse_config({"listener": [{**listener, "long_lines": "wrap"}]}).listeners()
    assert error.value.key == "listener[0].long_lines"


# --------------------------------------------------------------------------- refusal log


def events(caplog: pytest.LogCaptureFixture) -> list[LogEvent]:
    return [r.event for r in caplog.records if isinstance(getattr(r, "event", None), LogEvent)]


def refusals(caplog: pytest.LogCaptureFixture) -> list[tuple[str | None, str, RejectReason, str]]:
    return [
        (e.client_ip, e.command, e.reason, e.reply)
        for e in events(caplog)
        if isinstance(e, Rejected)
    ]


async def test_every_refusal_is_one_log_line_with_client_command_and_reply(
    listen: Listen, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, _ = await listen(relay_networks=ELSEWHERE, max_message_size=1000)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command(f"MAIL FROM:<{SENDER}> SIZE=5000")
    await client.command(f"MAIL FROM:<{SENDER}>")
    await client.command("RCPT TO:<b@elsewhere.example>")
    await client.command("RCPT TO:<")
    await client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    assert refusals(caplog) == [
        ("127.0.0.1", f"MAIL FROM:<{SENDER}> SIZE=5000", RejectReason.MESSAGE_TOO_BIG,
         "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("127.0.0.1", "RCPT TO:<b@elsewhere.example>", RejectReason.RELAY_DENIED,
         "554 5.7.1 Relay access denied"),
        ("127.0.0.1", "RCPT TO:<", RejectReason.SYNTAX,
         "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"),
        ("127.0.0.1", "AUTH PLAIN", RejectReason.TLS_REQUIRED,  # never the credentials
         "538 5.7.11 Encryption required for requested authentication mechanism"),
    ]  # fmt: skip


async def test_a_failed_tls_handshake_and_too_many_connections_are_one_line_each(
    listen: Listen, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, _ = await listen(max_connections=1)
    client, _ = await clients(handle.port)
    refused, greeting = await Client.connect(handle.port)
    assert greeting.code == 421
    await refused.close()
    await client.command("EHLO client.example")
    assert (await client.command("STARTTLS")).code == 220
    client.send(b"this is not a ClientHello\r\n" * 20)
    assert await client.closed_by_server()
    lines = refusals(caplog)
    assert lines[0] == (
        "127.0.0.1", "connect", RejectReason.TOO_MANY_CONNECTIONS,
        "421 4.7.0 Too many connections, try again later",
    )  # fmt: skip
    assert len(lines) == 2 and lines[1][:3] == (
        "127.0.0.1", "STARTTLS", RejectReason.TLS_HANDSHAKE_FAILED
    )  # fmt: skip
    assert lines[1][3].startswith("TLS handshake failed: ")
    assert not [r for r in caplog.records if r.exc_info]
