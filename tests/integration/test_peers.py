"""The test peers themselves behave as their scripts say.

Checked with clients that are not relaymail (aiosmtplib, swaks, raw sockets, dnspython), so
a bug in a peer cannot hide behind the same bug in the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import dns.resolver
import pytest
import trustme

from tests.peers.certs import expired_server_context
from tests.peers.dns_server import (
    AAAA,
    CNAME,
    MX,
    TXT,
    A,
    DNSServerFactory,
    NXDomain,
    ServFail,
)
from tests.peers.smtp_server import Action, Script, SMTPPeer, SMTPPeerFactory, StartTLS

pytestmark = pytest.mark.timeout(10)


class RawClient:
    """A bare SMTP client on a socket, for exact control of what is sent and when."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, peer: SMTPPeer) -> RawClient:
        return cls(*await asyncio.open_connection(peer.host, peer.port))

    async def reply(self) -> list[bytes]:
        """The lines of one (possibly multi-line) reply."""
        lines = [await self.reader.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(await self.reader.readline())
        return lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def message(body: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "sender@example.org"
    mail["To"] = "rcpt@example.test"
    mail["Subject"] = "peer self-test"
    mail.set_content(body)
    return mail


async def test_a_transaction_over_starttls_is_recorded(
    smtp_peer: SMTPPeerFactory, client_tls_context: ssl.SSLContext
) -> None:
    peer = await smtp_peer()
    client = aiosmtplib.SMTP(
        hostname=peer.host, port=peer.port, start_tls=False, tls_context=client_tls_context
    )
    await client.connect(timeout=5)
    # The name an MX lookup would give, checked against the certificate's SubjectAltName.
    await client.starttls(server_hostname="mx.example.test")
    await client.send_message(message("Hello.\n.leading dot\n"))
    await client.quit()
    await peer.wait_idle()

    verbs = [line.verb for line in peer.transcript]
    assert verbs == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert peer.lines(tls=False) == [peer.transcript[0].text, "STARTTLS"]
    assert peer.connections == 1 and peer.tls_sessions == 1
    session = peer.sessions[0]
    assert session.tls_version == "TLSv1.3" and session.tls_cipher and session.quit
    [transaction] = peer.transactions
    assert transaction.tls and transaction.accepted and transaction.reply_code == 250
    assert transaction.mail_from == "sender@example.org"
    assert transaction.recipients == ("rcpt@example.test",)
    assert transaction.data.endswith(b"\r\n\r\nHello.\r\n.leading dot\r\n")


async def test_pipelined_commands_in_one_segment_are_answered_in_order(
    smtp_peer: SMTPPeerFactory,
) -> None:
    peer = await smtp_peer(
        Script(
            rcpt_replies={"Gone@example.test": "550 5.1.1 no such user"},
            end_of_data_reply=["250 first line", "250 2.0.0 queued"],
        )
    )
    client = await RawClient.connect(peer)
    assert await client.reply() == [b"220 mx.example.test ESMTP relaymail test peer\r\n"]

    await client.send(
        b"EHLO client.example.org\r\nMAIL FROM:<a@example.org> SIZE=20\r\n"
        b"RCPT TO:<gone@example.test>\r\nRCPT TO:<ok@example.test>\r\nDATA\r\n"
    )
    ehlo = await client.reply()
    replies = [(await client.reply())[0][:3] for _ in range(4)]
    await client.send(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    end_of_data = await client.reply()
    quit_reply = await client.reply()
    await client.close()

    assert ehlo[0] == b"250-mx.example.test\r\n" and ehlo[-1] == b"250 STARTTLS\r\n"
    assert b"250-PIPELINING\r\n" in ehlo
    assert replies == [b"250", b"550", b"250", b"354"]
    assert end_of_data == [b"250-first line\r\n", b"250 2.0.0 queued\r\n"]
    assert quit_reply == [b"221 2.0.0 Bye\r\n"]
    [transaction] = peer.transactions
    assert transaction.mail_params == ("SIZE=20",)
    assert transaction.recipients == ("ok@example.test",)
    assert transaction.data == b"Subject: x\r\n\r\n.dot\r\n"
    assert not transaction.tls


async def test_starttls_inject_sends_the_injection_in_the_same_write(
    smtp_peer: SMTPPeerFactory,
) -> None:
    peer = await smtp_peer(Script(starttls=StartTLS.INJECT))
    client = await RawClient.connect(peer)
    await client.reply()
    await client.send(b"EHLO client.example.org\r\n")
    await client.reply()
    await client.send(b"STARTTLS\r\n")

    # One read returns what one segment carried: a separate write would have come later.
    first_read = await client.reader.read(65536)
    await client.close()
    await peer.wait_idle()

    assert first_read == b"220 2.0.0 Ready to start TLS\r\n250-injected\r\n250 OK\r\n"
    assert peer.tls_sessions == 0
    assert peer.sessions[0].tls_error is not None


@pytest.mark.parametrize(
    ("behaviour", "seen"),
    [
        ("454 4.7.0 TLS not available", b"454 4.7.0 TLS not available\r\n"),
        (["502 5.5.1 not", "502 5.5.1 here"], b"502-5.5.1 not\r\n502 5.5.1 here\r\n"),
        (StartTLS.DROP, b""),
        (StartTLS.EOF_AFTER_220, b"220 2.0.0 Ready to start TLS\r\n"),
        (StartTLS.GARBAGE, b"220 2.0.0 Ready to start TLS\r\nthis is not a TLS ServerHello\r\n"),
        (StartTLS.SILENT, None),
        (StartTLS.STALL, b"220 2.0.0 Ready to start TLS\r\n"),
    ],
    ids=["454", "502-multiline", "drop", "eof_after_220", "garbage", "silent", "stall"],
)
async def test_starttls_misbehaves_as_scripted(
    smtp_peer: SMTPPeerFactory, behaviour: StartTLS | str | list[str], seen: bytes | None
) -> None:
    peer = await smtp_peer(Script(starttls=behaviour))
    client = await RawClient.connect(peer)
    await client.reply()
    await client.send(b"EHLO c\r\n")
    await client.reply()
    await client.send(b"STARTTLS\r\n")

    received = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.2):
            while chunk := await client.reader.read(4096):
                received += chunk
    await client.close()

    assert received == (seen or b"")
    assert peer.tls_sessions == 0


async def test_a_new_script_applies_from_the_next_connection(smtp_peer: SMTPPeerFactory) -> None:
    peer = await smtp_peer(Script(greeting="421 4.3.2 try later"))
    first = await RawClient.connect(peer)
    peer.script = Script()
    second = await RawClient.connect(peer)

    assert await first.reader.read() == b"421 4.3.2 try later\r\n"
    assert (await second.reply())[0].startswith(b"220 ")
    await first.close()
    await second.close()


async def test_plaintext_pipelined_after_starttls_is_recorded_as_clear(
    smtp_peer: SMTPPeerFactory,
) -> None:
    peer = await smtp_peer()
    client = await RawClient.connect(peer)
    await client.reply()
    await client.send(b"EHLO c\r\n")
    await client.reply()
    await client.send(b"STARTTLS\r\nMAIL FROM:<a@example.org>\r\n")
    await client.reply()
    await client.close()
    await peer.wait_idle()

    assert peer.sessions[0].plaintext_after_starttls == b"MAIL FROM:<a@example.org>\r\n"
    assert "MAIL FROM:<a@example.org>" in peer.lines(tls=False)


async def test_swaks_delivers_over_ipv6_with_verified_starttls(
    smtp_peer: SMTPPeerFactory, swaks: str, tls_ca: trustme.CA, tmp_path: Path
) -> None:
    peer = await smtp_peer(host="::1")
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))

    process = await asyncio.create_subprocess_exec(
        swaks,
        *("--server", f"[{peer.host}]:{peer.port}", "--from", "sender@example.org"),
        *("--to", "rcpt@example.test", "--pipeline", "--tls", "--tls-verify"),
        *("--tls-ca-path", str(ca_file), "--body", "line one\n.dotted line\n"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    await peer.wait_idle()

    assert process.returncode == 0, output.decode()
    assert peer.sessions[0].client[0] == "::1"
    assert peer.lines(tls=False)[1:] == ["STARTTLS"]
    [transaction] = peer.transactions
    assert transaction.tls and transaction.recipients == ("rcpt@example.test",)
    assert b"\r\n\r\nline one\r\n.dotted line\r\n" in transaction.data


async def test_ehlo_refusal_makes_aiosmtplib_fall_back_to_helo(
    smtp_peer: SMTPPeerFactory,
) -> None:
    peer = await smtp_peer(Script(ehlo_reply="502 5.5.1 no EHLO"))
    async with aiosmtplib.SMTP(hostname=peer.host, port=peer.port, start_tls=False) as client:
        await client.send_message(message("Hello."))
    await peer.wait_idle()

    verbs = [line.verb for line in peer.transcript]
    assert verbs == ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert peer.transactions[0].accepted


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (Script(greeting="554 5.3.2 go away"), b"554 5.3.2 go away\r\n"),
        (Script(greeting="421 4.3.2 busy"), b"421 4.3.2 busy\r\n"),
        (Script(greeting=Action.DROP), b""),
        (Script(greeting="drop"), b""),
    ],
    ids=["554", "421-then-close", "drop", "drop-as-string"],
)
async def test_greeting_then_what_the_script_says(
    smtp_peer: SMTPPeerFactory, script: Script, expected: bytes
) -> None:
    peer = await smtp_peer(script)
    client = await RawClient.connect(peer)
    if expected.startswith(b"554"):
        assert await client.reply() == [expected]
        await client.send(b"QUIT\r\n")
        assert await client.reply() == [b"221 2.0.0 Bye\r\n"]
    else:
        # Everything up to EOF: the server closed after this.
        assert await client.reader.read() == expected
    await client.close()


async def test_silent_peers_never_answer(smtp_peer: SMTPPeerFactory) -> None:
    hanging = await smtp_peer(Script(greeting=None))
    stalling = await smtp_peer(Script(mail_reply=Action.STALL))

    client = await RawClient.connect(hanging)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.read(1), 0.2)
    await client.close()

    client = await RawClient.connect(stalling)
    await client.reply()
    await client.send(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
    await client.reply()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.read(1), 0.2)
    await client.close()
    await stalling.wait_idle()
    # Lines sent while the server stalls are still recorded.
    assert stalling.lines() == ["HELO c", "MAIL FROM:<a@example.org>", "NOOP"]


async def test_expired_certificate_fails_client_verification(
    smtp_peer: SMTPPeerFactory, client_tls_context: ssl.SSLContext
) -> None:
    peer = await smtp_peer(Script(ssl_context=expired_server_context()))
    client = aiosmtplib.SMTP(
        hostname=peer.host, port=peer.port, start_tls=False, tls_context=client_tls_context
    )
    await client.connect(timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        await client.starttls()
    client.close()
    await peer.wait_idle()

    assert peer.tls_sessions == 0 and peer.sessions[0].tls_error


async def test_stop_leaves_no_task_behind(smtp_peer: SMTPPeerFactory) -> None:
    peer = SMTPPeer(Script(mid_data=Action.STALL))
    async with peer:
        client = await RawClient.connect(peer)
        await client.reply()
        await client.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n")
        for _ in range(4):
            await client.reply()
        await client.send(b"Subject: stuck\r\n")
        await asyncio.sleep(0.05)
    await client.close()

    assert peer.sessions[0].ended
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_dns_answers_mx_by_preference_and_follows_cname(
    dns_server: DNSServerFactory,
) -> None:
    server = dns_server(
        [
            MX("example.test", 20, "mx-b.example.test"),
            MX("example.test", 10, "mx-a.example.test"),
            MX("example.test", 20, "mx-c.example.test"),
            A("mx-a.example.test", "127.0.0.1"),
            AAAA("mx-a.example.test", "::1"),
            CNAME("alias.example.test", "mx-a.example.test"),
            MX("nullmx.test", 0, "."),
            TXT("_mta-sts.example.test", 'v=STSv1; id="1"'),
        ]
    )
    resolver = server.resolver()

    mx = await resolver.resolve("example.test", "MX")
    by_preference = sorted((r.preference, r.exchange.to_text()) for r in mx)
    assert by_preference == [
        (10, "mx-a.example.test."),
        (20, "mx-b.example.test."),
        (20, "mx-c.example.test."),
    ]
    [null_mx] = await resolver.resolve("nullmx.test", "MX")
    assert (null_mx.preference, null_mx.exchange.to_text()) == (0, ".")
    cname = await resolver.resolve("alias.example.test", "A")
    assert cname.canonical_name.to_text() == "mx-a.example.test."
    assert [r.address for r in cname] == ["127.0.0.1"]
    assert [r.address for r in await resolver.resolve("mx-a.example.test", "AAAA")] == ["::1"]
    [txt] = await resolver.resolve("_mta-sts.example.test", "TXT")
    assert txt.strings == (b'v=STSv1; id="1"',)


async def test_dns_gives_nxdomain_nodata_and_servfail(dns_server: DNSServerFactory) -> None:
    server = dns_server(
        [
            A("mx.example.test", "127.0.0.1"),
            NXDomain("gone.example.test"),
            ServFail("broken.test"),
        ]
    )
    resolver = server.resolver()

    for name in ("gone.example.test", "undeclared.example.org"):
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve(name, "MX")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("mx.example.test", "MX")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(dns.resolver.NoNameservers, match="SERVFAIL"):
        await resolver.resolve("broken.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers, match="SERVFAIL"):
        await resolver.resolve("mx.broken.test", "A")
    assert loop.time() - started < 0.5


def test_dns_server_refuses_a_zone_no_server_could_hold(dns_server: DNSServerFactory) -> None:
    with pytest.raises(ValueError, match="CNAME and other data"):
        dns_server([CNAME("a.example.test", "b.example.test"), A("a.example.test", "127.0.0.1")])
    with pytest.raises(ValueError, match="cannot hold records"):
        dns_server([NXDomain("example.test"), A("mx.example.test", "127.0.0.1")])
