"""The Exim 4.96 test peer itself, each mode on its own: receiving server, sending client.

Checked with clients and servers that are not relaymail (swaks, raw sockets, the scriptable
SMTP peer), so that a later test failing against Exim points at relaymail, not at the peer.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess

import pytest

from tests.peers.exim import EximFactory, EximPeer, instance_processes
from tests.peers.exim_config import Credentials, EximOptions, Outcome, Relay, StartTLS
from tests.peers.smtp_server import Action, Script, SMTPPeerFactory

# With its own Date and Message-ID, so that Exim adds nothing when it is injected locally.
MESSAGE = (
    b"From: a@sender.test\r\nTo: u@dest.test\r\nSubject: exim peer\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <peer@sender.test>\r\n\r\n"
    b"Hello.\r\n.dot line\r\n\xc3\xa9 eight bit\r\n"
)


class Dialogue:
    """A raw SMTP client on a real socket: one command, one complete reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def reply(self) -> tuple[int, list[str]]:
        lines = []
        while True:
            line = self.file.readline().decode()
            lines.append(line[4:].rstrip("\r\n"))
            if line[3:4] != "-":
                return int(line[:3]), lines

    def command(self, line: str) -> tuple[int, list[str]]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.file = self.sock.makefile("rb")


def connect(peer: EximPeer, port: int | None = None) -> Dialogue:
    return Dialogue(socket.create_connection((peer.host, port or peer.port), timeout=10))


def run_swaks(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------ Exim as the server


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_message_is_stored_byte_exact_once_per_recipient(exim: EximFactory, host: str) -> None:
    peer = exim(host=host)
    dialogue = connect(peer)
    dialogue.reply()
    dialogue.command("EHLO client.test")
    dialogue.command("MAIL FROM:<a@sender.test>")
    dialogue.command("RCPT TO:<u@dest.test>")
    dialogue.command("RCPT TO:<v@dest.test>")
    assert dialogue.command("DATA")[0] == 354
    stuffed = MESSAGE.replace(b"\r\n.", b"\r\n..")

    assert dialogue.command(stuffed.decode("utf-8") + ".")[0] == 250
    assert dialogue.command("QUIT")[0] == 221

    assert list(peer.settle().values()) == [Outcome.DELIVERED]
    # One stored copy per recipient, each exactly what was sent (dot-unstuffed).
    assert peer.received_messages() == [MESSAGE, MESSAGE]
    assert peer.queue_count() == 0
    assert peer.paniclog() == ""


@pytest.mark.parametrize("advertised", [True, False])
def test_8bitmime_is_advertised_as_configured(exim: EximFactory, advertised: bool) -> None:
    peer = exim(EximOptions(eight_bit_mime=advertised))
    dialogue = connect(peer)
    assert dialogue.reply()[0] == 220

    code, lines = dialogue.command("EHLO client.test")

    assert code == 250
    assert ("8BITMIME" in lines[1:]) is advertised
    assert "STARTTLS" not in lines[1:]


def test_missing_keys_answer_454_to_starttls_and_clear_smtp_goes_on(exim: EximFactory) -> None:
    peer = exim(EximOptions(starttls=StartTLS.MISSING_KEYS))
    dialogue = connect(peer)
    dialogue.reply()

    assert "STARTTLS" in dialogue.command("EHLO client.test")[1][1:]
    assert dialogue.command("STARTTLS") == (454, ["TLS currently unavailable"])
    assert dialogue.command("MAIL FROM:<a@sender.test>")[0] == 250
    assert dialogue.command("QUIT")[0] == 221
    assert "TLS error on connection" in peer.mainlog()


def test_starttls_presents_a_certificate_that_verifies(
    exim: EximFactory, client_tls_context: ssl.SSLContext
) -> None:
    peer = exim(EximOptions(starttls=StartTLS.OK))
    dialogue = connect(peer)
    dialogue.reply()
    dialogue.command("EHLO client.test")

    assert dialogue.command("STARTTLS")[0] == 220
    dialogue.starttls(client_tls_context, "mx.example.test")

    assert isinstance(dialogue.sock, ssl.SSLSocket)
    assert dialogue.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert dialogue.command("EHLO client.test")[0] == 250


def test_auth_is_offered_only_under_tls_and_required_for_rcpt(
    exim: EximFactory, client_tls_context: ssl.SSLContext
) -> None:
    peer = exim(EximOptions(starttls=StartTLS.OK, auth=Credentials("user", "secret")))
    dialogue = connect(peer)
    dialogue.reply()
    in_clear = dialogue.command("EHLO client.test")[1][1:]
    dialogue.command("STARTTLS")
    dialogue.starttls(client_tls_context, "mx.example.test")
    under_tls = dialogue.command("EHLO client.test")[1][1:]
    wrong = base64.b64encode(b"\0user\0wrong").decode()
    right = base64.b64encode(b"\0user\0secret").decode()

    assert not any(line.startswith("AUTH") for line in in_clear)
    assert "AUTH PLAIN LOGIN" in under_tls
    assert dialogue.command("MAIL FROM:<a@sender.test>")[0] == 250
    assert dialogue.command("RCPT TO:<u@dest.test>")[0] == 550
    dialogue.command("RSET")
    assert dialogue.command(f"AUTH PLAIN {wrong}")[0] == 535
    assert dialogue.command(f"AUTH PLAIN {right}")[0] == 235
    dialogue.command("MAIL FROM:<a@sender.test>")
    assert dialogue.command("RCPT TO:<u@dest.test>")[0] == 250


def test_implicit_tls_port_and_swaks_login(
    exim: EximFactory, swaks: str, client_tls_context: ssl.SSLContext
) -> None:
    peer = exim(EximOptions(implicit_tls=True, auth=Credentials("user", "secret")))
    assert peer.tls_port is not None
    dialogue = connect(peer, peer.tls_port)
    dialogue.starttls(client_tls_context, "mx.example.test")
    assert dialogue.reply()[0] == 220
    dialogue.command("QUIT")

    swaks_run = run_swaks(
        swaks, "--server", f"127.0.0.1:{peer.tls_port}", "--tlsc", "--auth", "LOGIN",
        "--auth-user", "user", "--auth-password", "secret",
        "--from", "a@sender.test", "--to", "u@dest.test", "--body", "over 465",
    )  # fmt: skip

    assert swaks_run.returncode == 0, swaks_run.stdout
    assert list(peer.settle().values()) == [Outcome.DELIVERED]
    [stored] = peer.received_messages()
    assert b"\r\n\r\nover 465\r\n" in stored


# ------------------------------------------------------------------ Exim as the client


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_injected_message_is_relayed_to_the_route(
    exim: EximFactory, smtp_peer: SMTPPeerFactory, host: str
) -> None:
    sink = await smtp_peer(host=host)
    peer = exim(EximOptions(relay=Relay(host, sink.port)))

    message_id = await asyncio.to_thread(
        peer.send, "a@sender.test", ["u@dest.test", "v@dest.test"], MESSAGE
    )
    await sink.wait_idle()

    assert peer.outcome(message_id) is Outcome.DELIVERED
    assert peer.queue_count() == 0
    [transaction] = sink.transactions
    assert transaction.mail_from == "a@sender.test"
    assert transaction.recipients == ("u@dest.test", "v@dest.test")
    assert not transaction.tls
    assert transaction.data == MESSAGE
    assert sink.sessions[0].quit


@pytest.mark.parametrize("end_of_data", ["451 4.3.0 try later", Action.DROP])
async def test_a_deferred_message_stays_on_the_queue_until_a_forced_run(
    exim: EximFactory, smtp_peer: SMTPPeerFactory, end_of_data: str | Action
) -> None:
    sink = await smtp_peer(Script(end_of_data_reply=end_of_data))
    peer = exim(EximOptions(relay=Relay("127.0.0.1", sink.port)))

    message_id = await asyncio.to_thread(peer.send, "a@sender.test", ["u@dest.test"], MESSAGE)

    assert peer.outcome(message_id) is Outcome.DEFERRED
    assert peer.queue_count() == 1
    await asyncio.to_thread(peer.flush)
    await sink.wait_idle()
    assert len(sink.transactions) == 2
    assert peer.queue_count() == 1


def test_stop_leaves_no_exim_process() -> None:
    peer = EximPeer()
    peer.start()
    config = peer.layout.config
    root = peer.layout.root
    dialogue = connect(peer)
    dialogue.reply()
    assert instance_processes(config)

    peer.stop()

    assert instance_processes(config) == []
    assert not root.exists()
