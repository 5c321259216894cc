"""The inbound server against real sockets on 127.0.0.1: raw SMTP dialogues and swaks.

Every assertion is on a reply the server actually sent, or on what reached the
spool. The spool is an in-memory list (or one that is full, or broken).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
import ssl
from typing import Any

import pytest

from relaymail.dsn_request import Notify, Orcpt, RecipientDsn, Ret
from relaymail.listener_settings import ListenerMode
from relaymail.message import Envelope
from tests.integration.inbound_harness import (
    ELSEWHERE,
    HOSTNAME,
    LOOPBACK,
    MESSAGE,
    PASSWORD,
    RELAY_DOMAIN,
    USER,
    BrokenSpool,
    FullSpool,
    Listen,
    SlowSpool,
    swaks,
)

# =========================================================================== relay control


async def test_swaks_relays_to_any_domain_from_a_client_in_relay_networks(listen: Listen) -> None:
    handle, spool = await listen(relay_networks=LOOPBACK)
    run = await swaks(handle.port, "--from", "a@client.example", "--to", "b@elsewhere.example")
    assert run.returncode == 0, run.output
    assert run.saw("250 2.0.0 Ok: queued as Q0001")
    [(envelope, _)] = spool.messages
    assert envelope == Envelope("a@client.example", ("b@elsewhere.example",))


async def test_swaks_is_denied_554_relaying_from_outside_relay_networks(listen: Listen) -> None:
    handle, spool = await listen(relay_networks=ELSEWHERE)
    run = await swaks(handle.port, "--from", "a@client.example", "--to", "b@elsewhere.example")
    assert run.returncode == 24, run.output  # swaks: no recipient accepted
    assert run.saw("554 5.7.1 Relay access denied")
    assert spool.messages == []


async def test_swaks_to_a_relay_domain_is_accepted_from_anyone(listen: Listen) -> None:
    handle, spool = await listen(relay_networks=ELSEWHERE, relay_domains=(RELAY_DOMAIN,))
    run = await swaks(handle.port, "--from", "a@client.example", "--to", f"b@{RELAY_DOMAIN}")
    assert run.returncode == 0, run.output
    assert [env.recipients for env, _ in spool.messages] == [(f"b@{RELAY_DOMAIN}",)]


async def test_relay_domains_match_exactly_unless_written_with_a_leading_dot(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(relay_networks=(), relay_domains=("exact.example", ".tree.example"))
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    assert (await client.command("MAIL FROM:<a@client.example>")).code == 250
    verdicts = {
        rcpt: (await client.command(f"RCPT TO:<x@{rcpt}>")).code
        for rcpt in ("exact.example", "sub.exact.example", "tree.example", "a.b.tree.example")
    }
    assert verdicts == {
        "exact.example": 250,
        "sub.exact.example": 554,
        "tree.example": 554,
        "a.b.tree.example": 250,
    }


async def test_percent_hack_through_a_relay_domain_is_denied_to_untrusted_clients(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(relay_networks=ELSEWHERE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@client.example>")
    for rcpt in (f"victim%elsewhere.example@{RELAY_DOMAIN}", f"elsewhere!victim@{RELAY_DOMAIN}"):
        reply = await client.command(f"RCPT TO:<{rcpt}>")
        assert (reply.code, reply.text) == (554, "5.7.1 Relay access denied")


async def test_authenticated_client_may_relay_from_outside_relay_networks(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, spool = await listen(relay_networks=ELSEWHERE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    assert (await client.login()).code == 235
    _, final = await client.send_message(USER, ["b@elsewhere.example"], MESSAGE)
    assert final.code == 250
    assert len(spool.messages) == 1


# =========================================================================== submission / AUTH


async def test_submission_refuses_auth_and_mail_before_starttls(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(mode=ListenerMode.SUBMISSION)
    client, _ = await clients(handle.port)
    ehlo = await client.command("EHLO client.example")
    assert ehlo.lines[-1] == "250 STARTTLS"
    assert not any("AUTH" in line for line in ehlo.lines)
    for command in ("AUTH PLAIN AGFsaWNlAHB3", "MAIL FROM:<a@client.example>"):
        reply = await client.command(command)
        assert (reply.code, reply.text) == (530, "5.7.0 Must issue a STARTTLS command first")


async def test_swaks_auth_without_tls_on_submission_finds_no_auth(listen: Listen) -> None:
    handle, spool = await listen(mode=ListenerMode.SUBMISSION)
    run = await swaks(
        handle.port,
        "--from",
        USER,
        "--to",
        "b@elsewhere.example",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
    )
    assert run.returncode == 28, run.output  # swaks: AUTH failed / not offered
    assert spool.messages == []


async def test_relay_listener_answers_538_to_auth_in_clear(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(mode=ListenerMode.RELAY)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    reply = await client.command("AUTH PLAIN AGFsaWNlAHB3")
    assert (reply.code, reply.text[:7]) == (538, "5.7.11 ")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_submits_with_starttls_and_auth(listen: Listen, mechanism: str) -> None:
    handle, spool = await listen(mode=ListenerMode.SUBMISSION, relay_networks=())
    run = await swaks(
        handle.port,
        "--tls",
        "--auth",
        mechanism,
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--from",
        USER,
        "--to",
        "b@elsewhere.example",
    )
    assert run.returncode == 0, run.output
    assert run.saw("235 2.7.0 Authentication successful")
    [(envelope, data)] = spool.messages
    assert envelope.recipients == ("b@elsewhere.example",)
    assert b"with ESMTPSA" in data.split(b"\r\n\r\n")[0]


async def test_swaks_with_a_wrong_password_gets_535(listen: Listen) -> None:
    handle, spool = await listen(mode=ListenerMode.SUBMISSION)
    run = await swaks(
        handle.port,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        "wrong",
        "--from",
        USER,
        "--to",
        "b@elsewhere.example",
    )
    assert run.returncode == 28, run.output
    assert run.saw("535 5.7.8 Authentication credentials invalid")
    assert spool.messages == []


async def test_submission_after_starttls_still_needs_auth_before_mail(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, _ = await listen(mode=ListenerMode.SUBMISSION)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    ehlo = await client.command("EHLO client.example")
    assert ehlo.lines[-1] == "250 AUTH PLAIN LOGIN"
    assert not any("STARTTLS" in line for line in ehlo.lines)
    reply = await client.command("MAIL FROM:<a@client.example>")
    assert (reply.code, reply.text) == (530, "5.7.0 Authentication required")


async def test_auth_login_exchange_and_unknown_user(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, _ = await listen(mode=ListenerMode.SUBMISSION)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    challenge = await client.command("AUTH LOGIN")
    assert challenge.lines == ["334 " + base64.b64encode(b"Username:").decode()]
    challenge = await client.command(base64.b64encode(b"mallory").decode())
    assert challenge.lines == ["334 " + base64.b64encode(b"Password:").decode()]
    reply = await client.command(base64.b64encode(PASSWORD.encode()).decode())
    assert (reply.code, reply.text) == (535, "5.7.8 Authentication credentials invalid")


async def test_repeated_auth_failures_end_the_session_with_421(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, _ = await listen(mode=ListenerMode.SUBMISSION, max_auth_failures=2)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    assert (await client.login(password="guess1")).code == 535
    reply = await client.login(password="guess2")
    assert (reply.code, reply.text) == (421, "4.7.0 Too many failed authentication attempts")
    assert await client.closed_by_server()


async def test_auth_plain_for_another_authorization_identity_is_refused(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, _ = await listen(mode=ListenerMode.SUBMISSION)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    token = base64.b64encode(f"bob\0{USER}\0{PASSWORD}".encode()).decode()
    assert (await client.command(f"AUTH PLAIN {token}")).code == 535


async def test_implicit_tls_listener_with_swaks(listen: Listen) -> None:
    handle, spool = await listen(mode=ListenerMode.SMTPS, relay_networks=())
    run = await swaks(
        handle.port,
        "--tlsc",
        "--auth",
        "LOGIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--from",
        USER,
        "--to",
        "b@elsewhere.example",
    )
    assert run.returncode == 0, run.output
    assert len(spool.messages) == 1


async def test_implicit_tls_greets_inside_tls_and_never_offers_starttls(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, spool = await listen(mode=ListenerMode.SMTPS)
    client, greeting = await clients(handle.port, client_tls)
    assert greeting.lines == [f"220 {HOSTNAME} ESMTP relaymail"]
    ehlo = await client.command("EHLO client.example")
    assert ehlo.lines[-1] == "250 AUTH PLAIN LOGIN"
    assert not any("STARTTLS" in line for line in ehlo.lines)
    assert (await client.login()).code == 235
    _, final = await client.send_message(USER, ["b@elsewhere.example"], MESSAGE)
    assert final.code == 250
    [(_, data)] = spool.messages
    assert b"with ESMTPSA" in data and b"(using TLSv1.3 with cipher " in data


async def test_plaintext_on_the_implicit_tls_port_gets_nothing(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(mode=ListenerMode.SMTPS)
    reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
    writer.write(b"EHLO client.example\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_plaintext_injected_behind_starttls_is_discarded(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    # CVE-2024-34083 class: commands sent in clear in the same packet as
    # STARTTLS must not be executed inside the TLS session.
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    client.send(b"STARTTLS\r\nMAIL FROM:<evil@client.example>\r\n")
    assert (await client.reply()).code == 220
    await client.writer.start_tls(client_tls, server_hostname="localhost")
    await client.command("EHLO client.example")
    reply = await client.command("RCPT TO:<b@elsewhere.example>")
    assert (reply.code, reply.text) == (503, "5.5.1 Error: need MAIL command")


# =========================================================================== limits


async def test_size_is_advertised_and_mail_from_with_size_over_limit_gets_552(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(max_message_size=10_000)
    client, _ = await clients(handle.port)
    ehlo = await client.command("EHLO client.example")
    assert "250-SIZE 10000" in ehlo.lines
    reply = await client.command("MAIL FROM:<a@client.example> SIZE=10001")
    assert (reply.code, reply.text) == (
        552,
        "5.3.4 Message size exceeds fixed maximum message size",
    )
    assert (await client.command("MAIL FROM:<a@client.example> SIZE=9999")).code == 250


async def test_message_over_the_size_limit_gets_552_and_the_session_goes_on(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen(max_message_size=10_000)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    big = MESSAGE + b"x" * 70 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 200
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], big)
    assert (final.code, final.text) == (
        552,
        "5.3.4 Message size exceeds fixed maximum message size",
    )
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], MESSAGE)
    assert final.code == 250
    assert len(spool.messages) == 1


async def test_swaks_message_over_the_size_limit_gets_552(listen: Listen) -> None:
    handle, spool = await listen(max_message_size=2_000)
    run = await swaks(
        handle.port,
        "--from",
        "a@client.example",
        "--to",
        "b@elsewhere.example",
        "--body",
        "z" * 70 + "\n" + ("z" * 70 + "\n") * 40,
    )
    assert run.saw("552 5.3.4"), run.output
    assert spool.messages == []


async def test_too_many_recipients_get_452_and_the_accepted_ones_are_kept(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen(max_recipients=3)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    replies, final = await client.send_message(
        "a@client.example", [f"r{i}@elsewhere.example" for i in range(5)], MESSAGE
    )
    assert [r.code for r in replies[1:6]] == [250, 250, 250, 452, 452]
    assert replies[4].text == "4.5.3 Too many recipients"
    assert final.code == 250
    [(envelope, _)] = spool.messages
    assert len(envelope.recipients) == 3


async def test_lines_longer_than_the_limit_get_500_when_set_to_refuse(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen(max_line_length=1000, long_lines="refuse")
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    at_limit = b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n"
    over = b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n"
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], at_limit)
    assert final.code == 250
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], over)
    assert (final.code, final.text[:6]) == (500, "5.5.2 ")
    assert len(spool.messages) == 1


async def test_command_line_too_long_gets_500(listen: Listen, clients: Any) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    reply = await client.command("NOOP " + "x" * 600)
    assert (reply.code, reply.text) == (500, "5.5.2 Command line too long")
    assert (await client.command("NOOP")).code == 250


async def test_connections_over_the_limit_get_421_and_are_closed(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(max_connections=2)
    first, _ = await clients(handle.port)
    _second, _ = await clients(handle.port)
    third, greeting = await clients(handle.port)
    assert (greeting.code, greeting.text) == (421, "4.7.0 Too many connections, try again later")
    assert await third.closed_by_server()
    await first.command("QUIT")
    await first.closed_by_server()
    await asyncio.sleep(0.05)
    _fourth, greeting = await clients(handle.port)
    assert greeting.code == 220


async def test_a_verb_used_too_often_gets_421(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(max_commands_per_verb=3)
    client, _ = await clients(handle.port)
    for _ in range(3):
        assert (await client.command("NOOP")).code == 250
    reply = await client.command("NOOP")
    assert (reply.code, reply.text) == (421, "4.7.0 NOOP sent too many times")
    assert await client.closed_by_server()


async def test_unknown_commands_and_bad_syntax_get_500_and_501(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    assert (await client.command("EHLO")).lines == ["501 5.5.4 Syntax: EHLO hostname"]
    await client.command("EHLO client.example")
    assert (await client.command("FROB")).code == 500
    assert (await client.command("MAIL FROM: nobody")).code in (501, 553)
    assert (await client.command("MAIL FROM:<a@client.example> FOO=")).code == 501
    reply = await client.command("RCPT TO:<b@elsewhere.example>")
    assert (reply.code, reply.text) == (503, "5.5.1 Error: need MAIL command")


# =========================================================================== queue hand-off


async def test_queue_full_gets_452_4_3_1(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(FullSpool())
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], MESSAGE)
    assert (final.code, final.text) == (452, "4.3.1 Insufficient system storage")


async def test_swaks_sees_452_when_the_queue_is_full(listen: Listen) -> None:
    handle, _ = await listen(FullSpool())
    run = await swaks(handle.port, "--from", "a@client.example", "--to", "b@elsewhere.example")
    assert run.returncode != 0
    assert run.saw("452 4.3.1 Insufficient system storage"), run.output


async def test_a_failing_spool_gets_451_without_internal_details(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(BrokenSpool())
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], MESSAGE)
    assert final.code == 451
    assert "secret" not in str(final) and "RuntimeError" not in str(final)
    assert (await client.command("NOOP")).code == 250


async def test_250_is_sent_only_after_the_spool_returns(listen: Listen, clients: Any) -> None:
    spool = SlowSpool()
    handle, _ = await listen(spool)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@client.example>")
    await client.command("RCPT TO:<b@elsewhere.example>")
    await client.command("DATA")
    client.send(MESSAGE + b".\r\n")
    await spool.started.wait()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.readline(), 0.3)
    spool.release.set()
    reply = await client.reply()
    assert (reply.code, reply.text) == (250, "2.0.0 Ok: queued as Q0001")


# =========================================================================== message data


async def test_received_header_is_prepended_with_the_queue_id(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], MESSAGE)
    assert (final.code, final.text) == (250, "2.0.0 Ok: queued as Q0001")
    [(_, data)] = spool.messages
    header, _, rest = data.partition(b"\r\n" + MESSAGE[:5])
    assert rest, data
    unfolded = header.decode().replace("\r\n\t", " ")
    match = re.fullmatch(
        r"Received: from client\.example \(\[127\.0\.0\.1\]\) by mx\.test\.example "
        r"\(relaymail\) with ESMTP id Q0001 for <b@elsewhere\.example>; (.+)",
        unfolded,
    )
    assert match, unfolded
    assert email.utils.parsedate_to_datetime(match[1]).tzinfo is not None
    assert data.endswith(MESSAGE)


async def test_received_header_says_smtp_after_helo_and_lists_no_for_with_two_rcpts(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    assert (await client.command("HELO client.example")).lines == [f"250 {HOSTNAME}"]
    await client.send_message("a@client.example", ["b@x.example", "c@x.example"], MESSAGE)
    [(_, data)] = spool.messages
    first_field = data.split(b"\r\n", 2)[1]
    assert first_field.startswith(b"\tby mx.test.example (relaymail) with SMTP id Q0001; ")
    assert b" for <" not in data.split(b"\r\nFrom:")[0]


async def test_mail_with_too_many_received_headers_is_refused_as_a_loop(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen(max_received_headers=50)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    hops = b"".join(b"Received: from hop%d by hop%d; date\r\n" % (i, i + 1) for i in range(50))
    _, final = await client.send_message(
        "a@client.example", ["b@elsewhere.example"], hops + MESSAGE
    )
    assert (final.code, final.text[:6]) == (554, "5.4.6 ")
    _, final = await client.send_message(
        "a@client.example", ["b@elsewhere.example"], hops[hops.index(b"\r\n") + 2 :] + MESSAGE
    )
    assert final.code == 250
    assert len(spool.messages) == 1


async def test_received_in_the_body_does_not_count_towards_the_loop_limit(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(max_received_headers=2)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    body = MESSAGE + b"Received: quoted\r\n" * 5
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], body)
    assert final.code == 250


async def test_bare_lf_in_data_is_normalised_to_crlf(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message(
        "a@client.example", ["b@elsewhere.example"], b"Subject: lf\n\nline one\nline two\r\n"
    )
    assert final.code == 250
    [(_, data)] = spool.messages
    assert data.endswith(b"Subject: lf\r\n\r\nline one\r\nline two\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")


async def test_bare_lf_dot_does_not_end_the_data(listen: Listen, clients: Any) -> None:
    # SMTP smuggling: "\n.\n" or "\n.\r\n" must not be taken as the end of
    # data, so what follows cannot be smuggled in as a second message.
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    smuggled = (
        b"Subject: one\r\n\r\nfirst\n.\r\nMAIL FROM:<evil@client.example>\r\n"
        b"RCPT TO:<victim@elsewhere.example>\r\nDATA\r\n\r\nsecond\r\n"
    )
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], smuggled)
    assert final.code == 250
    assert (await client.command("NOOP")).code == 250
    [(envelope, data)] = spool.messages
    assert envelope.sender == "a@client.example"
    assert b"MAIL FROM:<evil@client.example>\r\n" in data


async def test_dot_stuffing_is_undone(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message(
        "a@client.example", ["b@elsewhere.example"], b"..Subject: x\r\n\r\n..\r\n...two\r\n.x\r\n"
    )
    assert final.code == 250
    [(_, data)] = spool.messages
    assert data.endswith(b"\r\n.Subject: x\r\n\r\n.\r\n..two\r\nx\r\n")


async def test_empty_message_is_accepted(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], b"")
    assert final.code == 250
    [(_, data)] = spool.messages
    assert data.startswith(b"Received: ") and data.endswith(b"\r\n")


async def test_large_message_with_dots_at_piece_boundaries_arrives_intact(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    lines = [b"line %06d %s" % (i, b"." * (i % 7)) for i in range(20_000)]
    lines[5000] = b".starts with a dot"
    lines[12345] = b"."
    body = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    _, final = await client.send_message("a@client.example", ["b@elsewhere.example"], stuffed)
    assert final.code == 250
    [(_, data)] = spool.messages
    assert data.endswith(body)


async def test_bare_lf_or_cr_in_a_command_line_is_rejected(listen: Listen, clients: Any) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    client.send(b"MAIL FROM:<a@client.example>\n")
    reply = await client.reply()
    assert (reply.code, reply.text[:6]) == (500, "5.5.2 ")
    client.send(b"MAIL FROM:<a@client.example>\rRCPT TO:<b@elsewhere.example>\r\n")
    assert (await client.reply()).code == 500
    reply = await client.command("RCPT TO:<b@elsewhere.example>")
    assert reply.code == 503  # neither MAIL was taken


# =========================================================================== protocol


async def test_ehlo_advertises_what_is_implemented(listen: Listen, clients: Any) -> None:
    handle, _ = await listen(max_message_size=1_000_000)
    client, greeting = await clients(handle.port)
    assert greeting.lines == [f"220 {HOSTNAME} ESMTP relaymail"]
    ehlo = await client.command("EHLO client.example")
    assert ehlo.lines == [
        f"250-{HOSTNAME}",
        "250-PIPELINING",
        "250-SIZE 1000000",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250-DSN",
        "250 STARTTLS",
    ]


async def test_aiosmtpd_replies_carry_enhanced_status_codes(listen: Listen, clients: Any) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    for command, expected in [
        ("NOOP", "250 2.0.0 OK"),
        ("RSET", "250 2.0.0 OK"),
        ("VRFY <a@b.example>", "252 2.0.0 "),
        ("QUIT", "221 2.0.0 Bye"),
    ]:
        reply = await client.command(command)
        assert reply.lines[-1].startswith(expected), reply


async def test_pipelined_commands_are_answered_in_order(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    client.send(
        b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n"
        b"RCPT TO:<b@elsewhere.example>\r\nRCPT TO:<c@elsewhere.example>\r\nDATA\r\n"
    )
    ehlo = await client.reply()
    assert "250-PIPELINING" in ehlo.lines
    codes = [(await client.reply()).code for _ in range(4)]
    assert codes == [250, 250, 250, 354]
    client.send(MESSAGE + b".\r\nMAIL FROM:<>\r\nRCPT TO:<d@elsewhere.example>\r\nDATA\r\n")
    codes = [(await client.reply()).code for _ in range(4)]
    assert codes == [250, 250, 250, 354]
    client.send(MESSAGE + b".\r\nQUIT\r\n")
    assert (await client.reply()).code == 250
    assert (await client.reply()).code == 221
    assert [env for env, _ in spool.messages] == [
        Envelope("a@client.example", ("b@elsewhere.example", "c@elsewhere.example")),
        Envelope("", ("d@elsewhere.example",)),
    ]


async def test_swaks_pipelining(listen: Listen) -> None:
    handle, spool = await listen()
    run = await swaks(
        handle.port,
        "--pipeline",
        "--from",
        "a@client.example",
        "--to",
        "b@elsewhere.example,c@elsewhere.example",
    )
    assert run.returncode == 0, run.output
    assert spool.messages[0][0].recipients == ("b@elsewhere.example", "c@elsewhere.example")


async def test_pipelined_data_without_valid_recipients_gets_554(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen(relay_networks=ELSEWHERE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    client.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@elsewhere.example>\r\nDATA\r\n")
    codes = [(await client.reply()).code for _ in range(3)]
    assert codes == [250, 554, 554]
    assert (await client.command("NOOP")).code == 250


async def test_dsn_parameters_are_kept_byte_exact_per_recipient(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    mail = await client.command("MAIL FROM:<a@client.example> RET=hdrs ENVID=Qx+2B1 AUTH=<>")
    assert mail.code == 250
    rcpt = await client.command(
        "RCPT TO:<b@elsewhere.example> NOTIFY=success,Failure ORCPT=rfc822;B+40Elsewhere.example"
    )
    assert rcpt.code == 250
    assert (await client.command("RCPT TO:<c@elsewhere.example> NOTIFY=NEVER")).code == 250
    assert (await client.command("RCPT TO:<e@elsewhere.example>")).code == 250
    client.send(b"DATA\r\n")
    assert (await client.reply()).code == 354
    client.send(MESSAGE + b".\r\n")
    assert (await client.reply()).code == 250

    [(envelope, _)] = spool.messages
    dsn = envelope.dsn_request
    assert (dsn.ret, dsn.envid) == (Ret.HDRS, "Qx+2B1")
    assert dsn.of("b@elsewhere.example") == RecipientDsn(
        Notify.SUCCESS | Notify.FAILURE, Orcpt("rfc822", "B+40Elsewhere.example")
    )
    assert dsn.of("c@elsewhere.example") == RecipientDsn(Notify.NEVER)
    assert dsn.of("e@elsewhere.example") == RecipientDsn()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<a@client.example> RET=BODY", "501 5.5.4 RET must be FULL or HDRS"),
        ("MAIL FROM:<a@client.example> RET", "501 5.5.4 RET must be FULL or HDRS"),
        ("MAIL FROM:<a@client.example> ENVID=a+2b", "501 5.5.4 ENVID must be xtext"),
        ("MAIL FROM:<a@client.example> ENVID=" + "x" * 101, "501 5.5.4 ENVID must be xtext"),
        ("MAIL FROM:<a@client.example> RET=FULL RET=HDRS", "501 5.5.4 Syntax: MAIL"),
        ("RCPT TO:<d@elsewhere.example> NOTIFY=NEVER,DELAY", "501 5.5.4 NOTIFY must be NEVER"),
        ("RCPT TO:<d@elsewhere.example> NOTIFY=", "501 5.5.4 Syntax: RCPT"),
        ("RCPT TO:<d@elsewhere.example> NOTIFY=SOMETIMES", "501 5.5.4 NOTIFY must be NEVER"),
        ("RCPT TO:<d@elsewhere.example> ORCPT=d@elsewhere.example", "501 5.5.4 ORCPT must be"),
        ("RCPT TO:<d@elsewhere.example> ORCPT=rfc822;a+zz", "501 5.5.4 ORCPT's address must"),
        ("RCPT TO:<d@elsewhere.example> ORCPT=utf-8;j\u00f6rg@x", "501 5.5.4 ORCPT's address"),
        ("RCPT TO:<d@elsewhere.example> FOO=BAR", "555 5.5.4 RCPT TO parameter FOO"),
        ("MAIL FROM:<a@client.example> BY=60;R", "555 5.5.4 MAIL FROM parameter BY"),
    ],
)
async def test_bad_dsn_parameters_get_501_and_unknown_ones_555(
    listen: Listen, clients: Any, command: str, reply: str
) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    if command.startswith("RCPT"):
        assert (await client.command("MAIL FROM:<a@client.example>")).code == 250
    answer = await client.command(command)
    assert answer.lines[-1].startswith(reply), answer
    assert (await client.command("NOOP")).code == 250  # the session goes on


async def test_smtputf8_addresses_need_the_smtputf8_parameter(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    reply = await client.command("MAIL FROM:<jörg@client.example>")
    assert (reply.code, reply.text[:6]) == (553, "5.6.7 ")
    assert (await client.command("MAIL FROM:<jörg@client.example> SMTPUTF8")).code == 250
    assert (await client.command("RCPT TO:<用户@例子.example>")).code == 250
    client.send(b"DATA\r\n")
    assert (await client.reply()).code == 354
    client.send(MESSAGE + b".\r\n")
    assert (await client.reply()).code == 250
    [(envelope, data)] = spool.messages
    assert envelope.recipients == ("用户@例子.example",)
    assert b" with UTF8SMTP" in data


async def test_null_sender_is_accepted(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    _, final = await client.send_message("", ["b@elsewhere.example"], MESSAGE)
    assert final.code == 250
    assert spool.messages[0][0].sender == ""


# =========================================================================== shutdown


async def test_close_says_421_to_idle_sessions_and_stops_accepting(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen()
    port = handle.port
    client, _ = await clients(port)
    await client.command("EHLO client.example")
    await asyncio.wait_for(handle.close(grace=5), 2)
    reply = await client.reply()
    assert (reply.code, reply.text) == (421, "4.3.2 Service shutting down")
    assert await client.closed_by_server()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_close_lets_a_message_in_progress_finish(listen: Listen, clients: Any) -> None:
    spool = SlowSpool()
    handle, _ = await listen(spool)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@client.example>")
    await client.command("RCPT TO:<b@elsewhere.example>")
    await client.command("DATA")
    # The next transaction already behind the dot: the 250 may not wait for it now.
    client.send(MESSAGE + b".\r\nMAIL FROM:<a@client.example>\r\n")
    await spool.started.wait()
    closing = asyncio.create_task(handle.close(grace=5))
    await asyncio.sleep(0.1)
    assert not closing.done()
    spool.release.set()
    assert (await client.reply()).code == 250
    reply = await client.reply()
    assert (reply.code, reply.text) == (421, "4.3.2 Service shutting down")
    await asyncio.wait_for(closing, 2)
    assert len(spool.messages) == 1


@pytest.mark.parametrize(
    "recipient",
    [
        '"b@elsewhere.example"@inbound.example',
        "<@inbound.example:b@elsewhere.example>",
        "b@elsewhere.example@inbound.example",
        "b@ELSEWHERE.example",
        "b@inbound.example.elsewhere.example",
        "b@[192.0.2.1]",
        "b%elsewhere.example@INBOUND.example",
    ],
)
async def test_routing_tricks_do_not_open_the_relay(
    listen: Listen, clients: Any, recipient: str
) -> None:
    handle, spool = await listen(relay_networks=ELSEWHERE, relay_domains=(RELAY_DOMAIN,))
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@client.example>")
    path = recipient if recipient.startswith("<") else f"<{recipient}>"
    reply = await client.command(f"RCPT TO:{path}")
    assert reply.code in (501, 553, 554), reply
    assert (await client.command("DATA")).code == 554
    assert spool.messages == []


async def test_second_starttls_is_refused(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext
) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.starttls(client_tls)
    await client.command("EHLO client.example")
    reply = await client.command("STARTTLS")
    assert (reply.code, reply.text) == (503, "5.5.1 TLS already active")
    assert (await client.command("NOOP")).code == 250


BIG_BODY = b"Subject: no dots\r\n\r\n" + (b"A" * 76 + b"\r\n") * 2000  # 156 KB, no ".\r\n"


@pytest.mark.parametrize(
    "cuts",
    [
        (),
        (65534, 65535, 65536, 65537),  # around the 64 KiB read window
        (-5, -4, -3, -2, -1),  # inside the final CRLF "." CRLF
        (1, 2, 3, 70_000, 140_000),
    ],
)
async def test_data_split_anywhere_across_reads_arrives_intact(
    listen: Listen, clients: Any, cuts: tuple[int, ...]
) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@client.example>")
    await client.command("RCPT TO:<b@elsewhere.example>")
    assert (await client.command("DATA")).code == 354
    wire = BIG_BODY + b".\r\n"
    offsets = sorted(cut % len(wire) for cut in cuts)
    for start, end in zip([0, *offsets], [*offsets, len(wire)], strict=True):
        client.send(wire[start:end])
        await client.writer.drain()
        await asyncio.sleep(0.02)
    reply = await client.reply()
    assert reply.code == 250, reply
    [(_, data)] = spool.messages
    assert data.endswith(BIG_BODY)
    assert (await client.command("NOOP")).code == 250


async def test_command_line_longer_than_the_read_window_gets_500(
    listen: Listen, clients: Any
) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    reply = await client.command("NOOP " + "x" * 200_000)
    assert (reply.code, reply.text) == (500, "5.5.2 Command line too long")
    assert (await client.command("NOOP")).code == 250


async def test_a_client_pipelining_thousands_of_commands_does_not_hold_the_others(
    listen: Listen, clients: Any
) -> None:
    # Each command already in a session's buffer is read without waiting: without a
    # turn given up now and then, one flood held every other session until it was done.
    handle, spool = await listen()
    flooding, _ = await clients(handle.port)
    other, _ = await clients(handle.port)
    for client in (flooding, other):
        await client.command("EHLO client.example")

    def transaction(sender: str) -> bytes:
        return (f"MAIL FROM:<{sender}>\r\nRCPT TO:<b@elsewhere.example>\r\nDATA\r\n".encode()
                + MESSAGE + b".\r\n")  # fmt: skip

    flooding.send(b"NOOP\r\n" * 5000 + transaction("flood@client.example"))
    await flooding.writer.drain()
    other.send(transaction("other@client.example"))
    for _ in range(5004):
        await flooding.reply()
    for _ in range(4):
        await other.reply()
    assert [env.sender for env, _ in spool.messages] == [
        "other@client.example", "flood@client.example"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argument", "code"),
    [
        # RFC 5321 4.1.3: an address literal holds an IPv4 or IPv6 address (anything in
        # brackets was taken before).
        ("<a@[300.1.1.1]>", 553), ("<a@[foo]>", 553), ("<a@[IPv6:::1:zz]>", 553),
        ("<a@[IPv6:fe80::1%eth0]>", 553), ("<a@[192.0.2.1]>", 250),
        ("<a@[IPv6:2001:db8::1]>", 250),
        # An international domain as IDNA2008 writes it or not at all: UTS46 maps these
        # to example.org, and checked as that they would leave as typed.
        ("<a@example.org\u200b> SMTPUTF8", 553), ("<a@exam\u00adple.org> SMTPUTF8", 553),
        ("<a@ＥＸＡＭＰＬＥ.org> SMTPUTF8", 553), ("<a@example\u3002org> SMTPUTF8", 553),
        ("<a@bücher.example> SMTPUTF8", 250),
    ],
)  # fmt: skip
async def test_a_domain_is_taken_as_written_or_not_at_all(
    listen: Listen, clients: Any, argument: str, code: int
) -> None:
    handle, _ = await listen()
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    assert (await client.command(f"MAIL FROM:{argument}")).code == code
