"""A session our policy refuses still ends with QUIT (RFC 5321 4.1.1.10) where QUIT can be sent.

Exim logs a session that closes without QUIT as "lost", Postfix as "lost connection after
STARTTLS". QUIT goes in clear before STARTTLS and over TLS once TLS is up; after a detected
injection, a failed handshake or a STARTTLS without a reply the connection is only closed.
"""

from __future__ import annotations

import pytest

from relaymail.config import parse_config
from relaymail.delivery import AttemptResult, Status
from tests.integration.conftest import config_for, deliver, envelope_lines, hop
from tests.peers.certs import server_context
from tests.peers.smtp_server import Script, SMTPPeer, StartTLS


def ended_with_quit(peer: SMTPPeer, *, tls: bool) -> bool:
    """The only session's last command was QUIT, over TLS or in clear as asked."""
    [session] = peer.sessions
    last = peer.transcript[-1]
    return session.quit and last.verb == "QUIT" and last.tls is tls


REFUSALS = {
    "454-to-starttls-fallback-off": (Script(starttls="454 4.7.0 TLS unavailable"), "may", False),
    "encrypt-without-starttls": (Script(advertise_starttls=False), "encrypt", True),
    "verify-without-starttls": (Script(advertise_starttls=False), "verify", True),
    "5xx-to-starttls-under-verify": (Script(starttls="554 5.7.0 no"), "verify", True),
}


@pytest.mark.parametrize(("script", "level", "fallback"), REFUSALS.values(), ids=REFUSALS)
async def test_policy_refusal_in_clear_ends_with_quit(smtp_peer, ca_file, script, level, fallback):
    peer = await smtp_peer(script)
    config = config_for([peer], ca_file=ca_file, level=level, fallback=fallback)
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    assert [a.result for a in result.attempts] == [AttemptResult.TLS_POLICY_FAILED]
    assert ended_with_quit(peer, tls=False)
    assert not envelope_lines(peer)


async def test_certificate_refused_under_verify_ends_with_quit_over_tls(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ssl_context=server_context(("wrong.example.test",))))
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="verify"))
    assert result.status is Status.DEFERRED
    assert peer.sessions[0].tls_version is not None
    assert ended_with_quit(peer, tls=True)
    assert not envelope_lines(peer)


async def test_downgrade_memory_refusal_ends_with_quit(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    config = parse_config(
        {
            "delivery": {"helo_name": "client.relaymail.test", "connection_idle_time": 0.01},
            "tls": {"ca_file": str(ca_file), "remember": True},
            "queue": {"directory": str(tmp_path / "queue")},
            "routes": {"dest.test": [hop(peer)]},
        }
    )
    [result] = await deliver(config)
    assert result.status is Status.DELIVERED and result.tls.used
    peer.script = Script(advertise_starttls=False)
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    [session] = peer.sessions[1:]
    assert session.quit and peer.transcript[-1].verb == "QUIT"


async def test_refused_greeting_ends_with_quit(smtp_peer, ca_file):
    # RFC 5321 3.1: a server that greets with 554 waits for the client's QUIT.
    peer = await smtp_peer(Script(greeting="554 5.3.2 not accepting mail"))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert [a.result for a in result.attempts] == [AttemptResult.GREETING_REFUSED]
    assert peer.lines() == ["QUIT"]


NO_QUIT = {
    "injection": (Script(starttls=StartTLS.INJECT), "verify"),
    "handshake-garbage": (Script(starttls=StartTLS.GARBAGE), "encrypt"),
    "eof-after-220": (Script(starttls=StartTLS.EOF_AFTER_220), "encrypt"),
    "no-reply-to-starttls": (Script(starttls=StartTLS.SILENT), "encrypt"),
}


@pytest.mark.parametrize(("script", "level"), NO_QUIT.values(), ids=NO_QUIT)
async def test_no_quit_once_the_starttls_boundary_is_unsafe(smtp_peer, ca_file, script, level):
    peer = await smtp_peer(script)
    config = config_for([peer], ca_file=ca_file, level=level, command_timeout=0.5)
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    await peer.wait_idle()
    assert "QUIT" not in peer.lines()
    assert not any(session.quit for session in peer.sessions)
