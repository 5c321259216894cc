"""Next hops that misbehave on purpose: every attempt ends in a recorded outcome, no session leaks.

Each case runs several attempts through the real engine against a loopback server and counts
this process's open file descriptors before and after: a session left open by a failed attempt
shows up as one descriptor more per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from relaymail.delivery import AttemptResult, RecipientResult, Status
from tests.integration.conftest import config_for, deliver
from tests.peers.smtp_server import Response, Script, SMTPPeer

ATTEMPTS = 4


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def attempts_against(peer: SMTPPeer, ca_file, **settings) -> list[RecipientResult]:
    """ATTEMPTS deliveries, each with its own engine (closed after it), like `relaymail deliver`."""
    config = config_for([peer], ca_file=ca_file, **settings)
    results = [r for _ in range(ATTEMPTS) for r in await deliver(config)]
    # The peer closes its side once the client has: a leaked session keeps both open.
    with contextlib.suppress(TimeoutError):
        await peer.wait_idle(timeout=2.0)
    for _ in range(3):
        await asyncio.sleep(0)  # transports close their sockets in a callback
    return results


def ehlo_with(*lines: str) -> list[str]:
    return ["250 mx.example.test", *(f"250 {line}" for line in lines)]


# Capabilities whose parameters break their grammar (RFC 1870 SIZE is `[1*DIGIT]`, RFC 4954 AUTH
# a list of SASL mechanism names): each is ignored as if it were absent, and the mail goes.
MALFORMED_CAPABILITIES: dict[str, Response] = {
    "size-superscript-digit": ehlo_with("PIPELINING", "SIZE ²"),
    "size-negative": ehlo_with("SIZE -1"),
    "size-huge": ehlo_with("SIZE 99999999999999999999999"),
    "size-letters": ehlo_with("SIZE abc"),
    "size-arabic-digits": ehlo_with("SIZE ١٠"),  # int() reads it as 10
    "size-4000-digits": ehlo_with("SIZE " + "9" * 4000),
    "auth-junk": ehlo_with("AUTH \x01\x7f ☃ =?", "AUTH"),
    "non-ascii-keyword": ehlo_with("ŞIZE 10", "PIPELINING"),
    "non-utf8-bytes": b"250-mx.example.test\r\n250-SIZE \xff\xfe1\r\n250-\xc3(\r\n250 8BITMIME\r\n",
    "empty-lines": b"250-mx.example.test\r\n250-\r\n250- \r\n250 PIPELINING\r\n",
}


@pytest.mark.parametrize("ehlo", MALFORMED_CAPABILITIES.values(), ids=MALFORMED_CAPABILITIES)
async def test_malformed_capabilities_are_ignored_and_the_mail_goes(smtp_peer, ca_file, ehlo):
    peer = await smtp_peer(Script(ehlo_reply=ehlo))
    before = open_fds()
    results = await attempts_against(peer, ca_file, level="none")
    assert open_fds() == before
    assert [r.status for r in results] == [Status.DELIVERED] * ATTEMPTS
    assert len(peer.transactions) == ATTEMPTS
    # A SIZE whose value is not plain ASCII digits was treated as absent: no SIZE= sent.
    for transaction in peer.transactions:
        sizes = [p for p in transaction.mail_params if p.startswith("SIZE=")]
        assert sizes == [] or sizes[0][5:].isascii()
    assert all(session.quit for session in peer.sessions)


def _garbage(step: str, reply: Response) -> Script:
    return Script(**{step: reply})  # type: ignore[arg-type]


# A server sending garbage at every step of the session; each is a failed host, deferred with
# its reason, the connection closed.
GARBAGE: dict[str, Script] = {
    "ehlo-5000-lines": Script(ehlo_reply=["250 mx.example.test"] + ["250 X-PAD"] * 5000),
    "ehlo-100k-line": Script(ehlo_reply=b"250-mx.example.test\r\n250-" + b"X" * 100_000 + b"\r\n"),
    "ehlo-closes-mid-reply": Script(ehlo_reply=b"421-mx.example.test closing\r\n"),
    "ehlo-not-a-reply": Script(ehlo_reply=b"\xff\xfe\x00\x01 not smtp\r\n"),
    "greeting-garbage": Script(greeting=b"SSH-2.0-OpenSSH_9.2\r\n"),
    "greeting-code-out-of-range": Script(greeting=b"999 what\r\n"),
    "mail-garbage": _garbage("mail_reply", b"\x00\x00\x00\r\n"),
    "rcpt-code-changes": _garbage("rcpt_reply", b"250-ok\r\n550 no\r\n"),
    "data-no-final-line": _garbage("data_reply", b"354-go on\r\n354-and on\r\n421-"),
    "end-of-data-long-line": _garbage("end_of_data_reply", b"250 " + b"x" * 20_000 + b"\r\n"),
    "quit-garbage": _garbage("quit_reply", b"\xff" * 10_000),
}


@pytest.mark.parametrize("script", GARBAGE.values(), ids=GARBAGE)
async def test_garbage_at_any_step_defers_and_closes_the_session(smtp_peer, ca_file, script):
    peer = await smtp_peer(script)
    before = open_fds()
    results = await attempts_against(peer, ca_file, level="none")
    assert open_fds() == before
    assert peer.connections == ATTEMPTS
    if script.quit_reply != Script().quit_reply:
        # The mail was accepted before the server broke: a bad QUIT reply changes nothing.
        assert [r.status for r in results] == [Status.DELIVERED] * ATTEMPTS
        return
    assert [r.status for r in results] == [Status.DEFERRED] * ATTEMPTS
    for result in results:
        assert [a.result for a in result.attempts] == [AttemptResult.SESSION_FAILED]


async def test_non_utf8_reply_text_is_kept_readable(smtp_peer, ca_file):
    peer = await smtp_peer(Script(rcpt_reply=b"550 5.1.1 \xff\xfe unknown \xc3(\r\n"))
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="none"))
    assert result.status is Status.BOUNCED
    assert result.enhanced_status == "5.1.1"


@pytest.mark.parametrize("pipelining", [True, False])
async def test_recipients_a_421_left_unanswered_say_the_session_ended(
    smtp_peer, ca_file, pipelining
):
    ehlo = ("PIPELINING",) if pipelining else ()
    peer = await smtp_peer(Script(ehlo=ehlo, rcpt_replies={"r2@dest.test": "421 4.3.2 going down"}))
    results = await deliver(
        config_for([peer], ca_file=ca_file),
        recipients=("r1@dest.test", "r2@dest.test", "r3@dest.test"),
    )
    assert [r.status for r in results] == [Status.DEFERRED] * 3
    reasons = {r.recipient: r.reason for r in results}
    assert "deferred the recipient: 421 4.3.2 going down" in reasons["r2@dest.test"]
    for unfinished in ("r1@dest.test", "r3@dest.test"):  # accepted; never answered
        assert "ended the session before DATA: 421 4.3.2 going down" in reasons[unfinished]
    assert not peer.transactions


async def test_a_reply_the_server_sent_unasked_fails_the_host_instead_of_shifting_the_rest(
    smtp_peer, ca_file
):
    # Two replies to MAIL: read in order, RCPT's would be taken as DATA's 250.
    peer = await smtp_peer(Script(mail_reply=b"250 2.1.0 Ok\r\n250 2.1.0 Ok again\r\n"))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert result.status is Status.DEFERRED
    assert "in reply to DATA: replies out of step" in result.reason
    assert not peer.transactions


async def test_an_address_queued_without_a_domain_name_bounces_and_the_others_go(
    smtp_peer, ca_file
):
    # Only a way in that checked less could queue it (sendmail and the pickup now check
    # as SMTP does); the scheduler and the engine must still take it in their stride.
    peer = await smtp_peer(Script())
    results = await deliver(
        config_for([peer], ca_file=ca_file), recipients=("u@dest.test\xa0", "v@dest.test")
    )
    assert [(r.status, r.enhanced_status) for r in results] == [
        (Status.BOUNCED, "5.1.3"), (Status.DELIVERED, "2.0.0")
    ]  # fmt: skip
    assert "invalid international domain" in results[0].reason
    assert [t.recipients for t in peer.transactions] == [("v@dest.test",)]
