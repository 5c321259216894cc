"""8-bit mail to a next hop without 8BITMIME goes 7-bit (RFC 6152 3), or bounces with 5.6.3."""

from __future__ import annotations

import email

from relaymail.delivery import AttemptResult, Status
from relaymail.message import canonical_data
from tests.integration.conftest import config_for, deliver
from tests.peers.smtp_server import Script

NO_8BITMIME = ("PIPELINING", "SIZE 10485760", "ENHANCEDSTATUSCODES")

EIGHT_BIT = canonical_data(
    "From: a@sender.test\nTo: u@dest.test\nSubject: menu\nMIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="sep"\n\n'
    "--sep\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    "Crème brûlée, ½ price.\n.a line with a leading dot\n--sep\n"
    "Content-Type: text/plain\n\nplain ascii\n--sep--\n".encode()
)


def decoded(data: bytes) -> list[bytes]:
    return [
        part.get_payload(decode=True)
        for part in email.message_from_bytes(data).walk()
        if not part.is_multipart()
    ]


async def test_8bit_body_is_sent_quoted_printable_without_8bitmime(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo=NO_8BITMIME))
    [result] = await deliver(config_for([peer], ca_file=ca_file), data=EIGHT_BIT)
    assert result.status is Status.DELIVERED
    [transaction] = peer.transactions
    assert transaction.data.isascii()
    assert "BODY=8BITMIME" not in transaction.mail_params
    assert f"SIZE={len(transaction.data)}" in transaction.mail_params  # the size sent
    assert decoded(transaction.data) == decoded(EIGHT_BIT)
    assert b"Content-Transfer-Encoding: quoted-printable" in transaction.data


async def test_8bit_body_goes_unchanged_with_8bitmime(smtp_peer, ca_file):
    peer = await smtp_peer(Script())
    [result] = await deliver(config_for([peer], ca_file=ca_file), data=EIGHT_BIT)
    assert result.status is Status.DELIVERED
    assert peer.transactions[0].data == EIGHT_BIT
    assert "BODY=8BITMIME" in peer.transactions[0].mail_params


async def test_8bit_header_without_8bitmime_or_smtputf8_bounces_with_5_6_3(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo=NO_8BITMIME))
    data = canonical_data("Subject: crème brûlée\n\nbody\n".encode())
    [result] = await deliver(config_for([peer], ca_file=ca_file), data=data)
    assert result.status is Status.BOUNCED
    assert result.enhanced_status == "5.6.3"
    assert [a.result for a in result.attempts] == [AttemptResult.EIGHTBITMIME_REFUSED]
    assert not [line for line in peer.lines() if line.startswith("MAIL")]
    assert peer.sessions[0].quit


async def test_8bit_inside_message_rfc822_bounces_with_5_6_3(smtp_peer, ca_file):
    peer = await smtp_peer(Script(ehlo=NO_8BITMIME))
    data = canonical_data(
        b"Subject: fwd\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n"
        b"Subject: inner\n\nna\xc3\xafve\n"
    )
    [result] = await deliver(config_for([peer], ca_file=ca_file), data=data)
    assert result.status is Status.BOUNCED
    assert result.enhanced_status == "5.6.3"
    assert not peer.transactions
