"""The rest of a real SMTP client, each behaviour against a loopback server that shows it."""

from __future__ import annotations

import asyncio
import socket

from relaymail.delivery import AttemptResult, Status
from relaymail.message import canonical_data
from tests.integration.conftest import MESSAGE, config_for, deliver, hop
from tests.peers.smtp_server import Action, Script

# -- per-recipient outcomes ---------------------------------------------------------------


async def test_rcpt_replies_decide_each_recipient(smtp_peer, ca_file):
    peer = await smtp_peer(
        Script(
            rcpt_replies={
                "gone@dest.test": ["550-5.1.1 no such user", "550 5.1.1 really, none"],
                "busy@dest.test": "452 4.2.2 mailbox full",
            }
        )
    )
    rcpts = ("ok@dest.test", "gone@dest.test", "busy@dest.test")
    ok, gone, busy = await deliver(config_for([peer], ca_file=ca_file), rcpts)
    assert ok.status is Status.DELIVERED and ok.reply.startswith("250")
    assert gone.status is Status.BOUNCED
    assert gone.reply == "550 5.1.1 no such user 5.1.1 really, none"
    assert gone.enhanced_status == "5.1.1"
    assert busy.status is Status.DEFERRED and "452 4.2.2" in busy.reason
    [transaction] = peer.transactions
    assert transaction.recipients == ("ok@dest.test",)


async def test_4xx_to_rcpt_is_tried_on_the_next_host_in_the_same_attempt(smtp_peer, ca_file):
    first = await smtp_peer(Script(rcpt_reply="451 4.7.1 greylisted"))
    second = await smtp_peer(Script())
    [result] = await deliver(config_for([first, second], ca_file=ca_file))
    assert result.status is Status.DELIVERED
    assert result.host == hop(second)
    assert [a.result for a in result.attempts] == [
        AttemptResult.RCPT_DEFERRED,
        AttemptResult.DELIVERED,
    ]


async def test_4xx_everywhere_defers_with_the_last_reply(smtp_peer, ca_file):
    first = await smtp_peer(Script(rcpt_reply="451 4.7.1 greylisted"))
    second = await smtp_peer(Script(rcpt_reply="450 4.2.0 later"))
    [result] = await deliver(config_for([first, second], ca_file=ca_file))
    assert result.status is Status.DEFERRED
    assert result.reply == "450 4.2.0 later"


async def test_5xx_to_rcpt_is_not_tried_elsewhere(smtp_peer, ca_file):
    first = await smtp_peer(Script(rcpt_reply="550 5.1.1 unknown"))
    second = await smtp_peer(Script())
    [result] = await deliver(config_for([first, second], ca_file=ca_file))
    assert result.status is Status.BOUNCED
    assert second.connections == 0


async def test_end_of_data_replies(smtp_peer, ca_file):
    for reply, status in [
        ("554 5.7.1 spam", Status.BOUNCED),
        ("451 4.3.0 try again", Status.DEFERRED),
    ]:
        peer = await smtp_peer(Script(end_of_data_reply=reply))
        [result] = await deliver(config_for([peer], ca_file=ca_file))
        assert result.status is status
        assert result.reply == reply


async def test_data_command_refused(smtp_peer, ca_file):
    peer = await smtp_peer(Script(data_reply="554 5.5.1 no valid recipients"))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert result.status is Status.BOUNCED
    assert "refused DATA" in result.reason


async def test_5xx_to_mail_bounces_and_4xx_defers(smtp_peer, ca_file):
    peer = await smtp_peer(Script(mail_reply="553 5.1.8 bad sender"))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert result.status is Status.BOUNCED and "refused the sender" in result.reason
    peer = await smtp_peer(Script(mail_reply="451 4.3.0 later"))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert result.status is Status.DEFERRED


async def test_421_mid_transaction_defers_what_is_not_yet_accepted(smtp_peer, ca_file):
    peer = await smtp_peer(Script(rcpt_replies={"b@dest.test": "421 4.3.2 shutting down"}))
    a, b = await deliver(config_for([peer], ca_file=ca_file), ("a@dest.test", "b@dest.test"))
    assert a.status is Status.DEFERRED
    assert b.status is Status.DEFERRED
    assert not peer.transactions


async def test_dropped_connection_mid_data_defers(smtp_peer, ca_file):
    peer = await smtp_peer(Script(mid_data=Action.DROP))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert result.status is Status.DEFERRED
    assert result.attempts[-1].result is AttemptResult.SESSION_FAILED


# -- hosts that fail before the transaction ------------------------------------------------


async def test_5xx_greeting_skips_the_host(smtp_peer, ca_file):
    first = await smtp_peer(Script(greeting="554 5.3.2 not accepting mail"))
    second = await smtp_peer(Script())
    [result] = await deliver(config_for([first, second], ca_file=ca_file))
    assert result.status is Status.DELIVERED
    assert result.attempts[0].result == AttemptResult.GREETING_REFUSED
    assert "554 5.3.2" in result.attempts[0].detail


async def test_every_host_failing_defers_with_each_reason(smtp_peer, ca_file):
    first = await smtp_peer(Script(greeting="421 4.3.2 busy"))
    second = await smtp_peer(Script(ehlo_reply="451 4.3.0 ehlo trouble"))
    [result] = await deliver(config_for([first, second], ca_file=ca_file))
    assert result.status is Status.DEFERRED
    assert "421 4.3.2" in result.reason and "451 4.3.0" in result.reason


async def test_refused_connection_moves_on(smtp_peer, ca_file):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    good = await smtp_peer(Script())
    [result] = await deliver(config_for([f"127.0.0.1:{port}", good], ca_file=ca_file))
    assert result.status is Status.DELIVERED
    assert result.attempts[0].result == AttemptResult.CONNECT_FAILED


async def test_connect_timeout_covers_the_tcp_connect(ca_file):
    # A listener that never accepts, with its backlog full: further SYNs go
    # unanswered, so connect() hangs until connect_timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.1)
    try:
        config = config_for([f"127.0.0.1:{port}"], ca_file=ca_file, connect_timeout=0.5)
        [result] = await deliver(config)
    finally:
        for s in [listener, *fillers]:
            s.close()
    assert result.status is Status.DEFERRED
    assert "connect timed out after 0.5s" in result.reason


async def test_a_server_that_never_greets_cannot_hang_delivery(smtp_peer, ca_file):
    peer = await smtp_peer(Script(greeting=None))
    [result] = await deliver(config_for([peer], ca_file=ca_file, command_timeout=0.3))
    assert result.status is Status.DEFERRED
    assert "no reply within 0.3s" in result.reason


async def test_stall_mid_data_is_a_timeout_not_a_hang(smtp_peer, ca_file):
    # The server stops reading: a 20 MB message overfills the loopback socket buffers,
    # so the write itself stalls and command_timeout ends it.
    peer = await smtp_peer(Script(mid_data=Action.STALL, ehlo=("PIPELINING", "SIZE 0")))
    big = canonical_data(b"Subject: big\n\n" + (b"x" * 998 + b"\n") * 20000)
    config = config_for([peer], ca_file=ca_file, command_timeout=0.5, level="none")
    [result] = await deliver(config, data=big)
    assert result.status is Status.DEFERRED
    assert "stopped reading the message for 0.5s" in result.reason


async def test_stall_after_the_dot_waits_data_timeout(smtp_peer, ca_file):
    peer = await smtp_peer(Script(end_of_data_reply=Action.STALL))
    config = config_for([peer], ca_file=ca_file, command_timeout=5.0, data_timeout=0.4)
    [result] = await deliver(config)
    assert result.status is Status.DEFERRED
    assert "no reply within 0.4s" in result.reason


async def test_malformed_reply_is_a_failed_host_not_a_traceback(smtp_peer, ca_file):
    for bad in [b"hello there\r\n", b"250-first\r\n251 second\r\n", b"2" * 10000]:
        peer = await smtp_peer(Script(mail_reply=bad))
        [result] = await deliver(config_for([peer], ca_file=ca_file))
        assert result.status is Status.DEFERRED
        assert "protocol error" in result.reason


# -- protocol details -----------------------------------------------------------------------


async def test_helo_fallback_when_ehlo_is_refused(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo_reply="500 5.5.1 what?"))
    [result] = await deliver(config_for([peer], ca_file=ca_file))
    assert result.status is Status.DELIVERED
    assert peer.lines()[:2] == ["EHLO client.relaymail.test", "HELO client.relaymail.test"]
    assert peer.transactions[0].mail_params == ()  # no ESMTP parameters after HELO


async def test_size_over_the_servers_limit_bounces_before_mail(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo=("SIZE 100", "PIPELINING")))
    data = canonical_data(b"Subject: long\n\n" + b"x" * 200)
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="none"), data=data)
    assert result.status is Status.BOUNCED
    assert "exceeds the limit" in result.reason
    assert not [line for line in peer.lines() if line.startswith("MAIL")]


async def test_mail_parameters_size_8bitmime_smtputf8(smtp_peer, ca_file):
    peer = await smtp_peer(Script())
    data = canonical_data("Subject: café\n\nnaïve\n".encode())
    [result] = await deliver(config_for([peer], ca_file=ca_file), ("josé@dest.test",), data)
    assert result.status is Status.DELIVERED
    [transaction] = peer.transactions
    assert f"SIZE={len(data)}" in transaction.mail_params
    assert "BODY=8BITMIME" in transaction.mail_params
    assert "SMTPUTF8" in transaction.mail_params
    assert transaction.recipients == ("josé@dest.test",)


async def test_international_address_bounces_without_smtputf8(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo=("PIPELINING", "8BITMIME")))
    [result] = await deliver(config_for([peer], ca_file=ca_file), ("josé@dest.test",))
    assert result.status is Status.BOUNCED
    assert "SMTPUTF8" in result.reason


async def test_dot_stuffing_and_line_endings_arrive_intact(smtp_peer, ca_file):
    peer = await smtp_peer(Script())
    raw = b"Subject: dots\n\n.\n..two\n.three\nbare\rcr\nend"
    await deliver(config_for([peer], ca_file=ca_file), data=canonical_data(raw))
    assert (
        peer.transactions[0].data
        == b"Subject: dots\r\n\r\n.\r\n..two\r\n.three\r\nbare\r\ncr\r\nend\r\n"
    )


async def test_without_pipelining_commands_go_one_at_a_time(smtp_peer, ca_file):
    peer = await smtp_peer(
        Script(ehlo=("SIZE 1000000",), rcpt_replies={"x@dest.test": "550 5.1.1 no"})
    )
    [result] = await deliver(config_for([peer], ca_file=ca_file), ("x@dest.test",))
    assert result.status is Status.BOUNCED
    # Without PIPELINING, DATA is not sent once every RCPT has failed.
    assert "DATA" not in peer.lines()


async def test_pipelining_sends_the_envelope_as_one_group(ca_file):
    """A server that answers nothing until MAIL, RCPT and DATA have all arrived.

    A client that waited for each reply would stall here; a pipelining one
    (RFC 2920) delivers in two round trips.
    """
    received: list[bytes] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-strict.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
        group = [await reader.readline() for _ in range(4)]  # MAIL, RCPT, RCPT, DATA
        received.extend(group)
        writer.write(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        while await reader.readline() not in (b".\r\n", b""):
            pass
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = config_for([f"127.0.0.1:{port}"], ca_file=ca_file, command_timeout=2.0)
        results = await deliver(config, ("a@dest.test", "b@dest.test"))
        await asyncio.wait_for(done.wait(), 2)
    finally:
        server.close()
    assert all(r.status is Status.DELIVERED for r in results)
    assert [line.split(b":")[0] for line in received] == [
        b"MAIL FROM",
        b"RCPT TO",
        b"RCPT TO",
        b"DATA\r\n",
    ]


async def test_ipv6_route(smtp_peer, ca_file):
    peer = await smtp_peer(Script(), host="::1")
    [result] = await deliver(config_for([peer], ca_file=ca_file, level="verify"))
    assert result.status is Status.DELIVERED
    assert result.tls.verified  # ::1 is in the certificate's IP addresses
    assert result.host == f"[::1]:{peer.port}"


async def test_connection_reuse_for_the_next_message(smtp_peer, ca_file):
    from relaymail.delivery import DeliveryEngine
    from relaymail.message import Envelope

    peer = await smtp_peer(Script())
    engine = DeliveryEngine(config_for([peer], ca_file=ca_file))
    try:
        for i in range(5):
            [result] = await engine.deliver(
                Envelope("a@sender.test", (f"u{i}@dest.test",)), MESSAGE
            )
            assert result.status is Status.DELIVERED
    finally:
        await engine.close()
    assert peer.connections == 1
    assert len(peer.transactions) == 5
    assert peer.lines().count("STARTTLS") == 1


async def test_reused_session_is_reset_after_a_transaction_left_open(smtp_peer, ca_file):
    from relaymail.delivery import DeliveryEngine
    from relaymail.message import Envelope

    peer = await smtp_peer(
        Script(rcpt_replies={"gone@dest.test": "550 5.1.1 no"}, data_reply="554 5.5.1 no rcpt")
    )
    engine = DeliveryEngine(config_for([peer], ca_file=ca_file))
    try:
        [first] = await engine.deliver(Envelope("a@sender.test", ("gone@dest.test",)), MESSAGE)
        [second] = await engine.deliver(Envelope("a@sender.test", ("u@dest.test",)), MESSAGE)
    finally:
        await engine.close()
    assert first.status is Status.BOUNCED
    assert peer.connections == 1  # the same session, reused
    assert "RSET" in peer.lines()
    assert peer.lines().index("RSET") < peer.lines().index("RCPT TO:<u@dest.test>")
    # The session's script still refuses DATA: the point is the RSET before MAIL.
    assert second.status is Status.BOUNCED and "refused DATA" in second.reason
