"""DSN (RFC 3461) end to end: parameters in over a raw socket, kept by the queue, honoured in
the reports relaymail writes, and passed on to next hops that offer DSN (a scripted peer and
a real Exim).

The daemon test sends every case through one `relaymail serve`, so the suite pays for one
start; each report is parsed back with the stdlib email package.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from relaymail.delivery import Status
from relaymail.dsn_request import DsnRequest, Notify, Orcpt, RecipientDsn, Ret
from tests.integration.conftest import config_for, deliver, hop
from tests.integration.daemon_process import RELAYMAIL, free_port, run_command
from tests.integration.inbound_harness import Client
from tests.integration.test_daemon import make_config, start_daemon, swaks, wait_for
from tests.integration.test_maildrop import sendmail
from tests.peers.exim import EximFactory
from tests.peers.exim_config import EximOptions, Outcome, Relay
from tests.peers.smtp_server import DEFAULT_CAPABILITIES, Script, SMTPPeer, SMTPPeerFactory

pytestmark = pytest.mark.timeout(120)

OFFERS_DSN = (*DEFAULT_CAPABILITIES, "DSN")
BODY = b"From: a@src.test\r\nSubject: dsn case\r\n\r\nthe body itself\r\n"
GONE = "550 5.1.1 no such user"


async def send(port: int, mail: str, rcpts: list[str], data: bytes = BODY) -> str:
    """One transaction over a raw socket, each line exactly as given; the queue id."""
    client, _ = await Client.connect(port)
    try:
        ehlo = await client.command("EHLO client.test")
        assert "DSN" in [line[4:] for line in ehlo.lines]
        assert (await client.command(mail)).code == 250, mail
        for rcpt in rcpts:
            assert (await client.command(rcpt)).code == 250, rcpt
        assert (await client.command("DATA")).code == 354
        client.send(data + b".\r\n")
        reply = await client.reply()
        assert reply.code == 250, reply
        await client.command("QUIT")
    finally:
        await client.close()
    queued = re.search(r"queued as (\w+)", reply.text)
    assert queued is not None
    return queued[1]


def reports(mailbox: SMTPPeer) -> dict[str, EmailMessage]:
    """The DSNs the mailbox got, by their Action (one report of each kind here)."""
    found: dict[str, EmailMessage] = {}
    for transaction in mailbox.transactions:
        assert transaction.mail_from == ""
        message = email.message_from_bytes(transaction.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        _, per_recipient = status_blocks(message)
        actions = {block["Action"] for block in per_recipient}
        assert len(actions) == 1
        found[actions.pop()] = message
    return found


def status_blocks(message: EmailMessage) -> tuple[Message, list[Message]]:
    report = list(message.iter_parts())[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return blocks[0], blocks[1:]


def envelope_lines(peer: SMTPPeer) -> list[str]:
    return [line.text for line in peer.transcript if line.verb in ("MAIL", "RCPT")]


def transactions(peer: SMTPPeer) -> list[list[str]]:
    """The MAIL and RCPT lines of each transaction the peer saw."""
    grouped: list[list[str]] = []
    for line in envelope_lines(peer):
        if line.startswith("MAIL"):
            grouped.append([])
        grouped[-1].append(line)
    return grouped


def notices(log: str) -> list[str]:
    return [line for line in log.splitlines() if "notice" in line and "kind=" in line]


async def test_dsn_through_the_daemon(smtp_peer: SMTPPeerFactory, ca_file: Path, tmp_path: Path):
    refusing = {a: GONE for a in ("gone@plain.test", "never@plain.test", "quiet@plain.test")}
    plain = await smtp_peer(Script(rcpt_replies=refusing))
    capable = await smtp_peer(Script(ehlo=OFFERS_DSN))
    slow = await smtp_peer(Script(rcpt_reply="451 4.3.0 try again later"))
    mailbox = await smtp_peer(Script())
    port = free_port()
    routes = {"plain.test": [hop(plain)], "dsn.test": [hop(capable)], "slow.test": [hop(slow)],
              "src.test": [hop(mailbox)]}  # fmt: skip
    config = make_config(tmp_path, port, ca_file, routes, queue={"retry": ["1h"]})
    code, _, err = sendmail("-C", str(config), "-N", "sometimes", "z@dsn.test", as_nobody=False)
    assert (code, err.startswith("sendmail: -N: ")) == (64, True), err
    daemon = await start_daemon(tmp_path, config, port)
    try:
        code, out = await swaks(port, "--quit-after", "EHLO")
        assert code == 0 and re.search(r"^<-  250[- ]DSN$", out, re.MULTILINE), out
        # 1: to a next hop without DSN: a bounce only for FAILURE, a relayed report for SUCCESS.
        await send(port, "MAIL FROM:<a@src.test> RET=FULL ENVID=QQ+2B1", [
            "RCPT TO:<gone@plain.test> NOTIFY=FAILURE ORCPT=rfc822;Gone+2Bx@Plain.test",
            "RCPT TO:<never@plain.test> NOTIFY=NEVER",
            "RCPT TO:<quiet@plain.test> NOTIFY=SUCCESS",
            "RCPT TO:<ok@plain.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;OK@plain.test",
            "RCPT TO:<plain@plain.test>",
        ])  # fmt: skip
        # 2: to a next hop with DSN: every parameter goes on, as sent; no report from us.
        await send(port, "MAIL FROM:<a@src.test> ret=hdrs ENVID=abc+3Dd", [
            "RCPT TO:<x@dsn.test> NOTIFY=delay,success ORCPT=rfc822;X+2By@dsn.test",
            "RCPT TO:<y@dsn.test>",
        ])  # fmt: skip
        # 2b: the same from sendmail's flags, through the maildrop.
        code, _, err = sendmail("-C", str(config), "-N", "success,delay", "-R", "hdrs",
                                "-V", "env+1", "z@dsn.test", as_nobody=False)  # fmt: skip
        assert code == 0, err
        # 3: the null sender gets no report, whatever NOTIFY says.
        await send(port, "MAIL FROM:<>", [
            "RCPT TO:<gone@plain.test> NOTIFY=FAILURE",
            "RCPT TO:<ok@plain.test> NOTIFY=SUCCESS",
        ])  # fmt: skip
        # 4: deferred, so it stays queued: `queue show` has its parameters as received.
        waiting = await send(port, "MAIL FROM:<a@src.test> RET=FULL ENVID=keep+2B1", [
            "RCPT TO:<wait@slow.test> NOTIFY=DELAY ORCPT=utf-8;w\\x{E9}@slow.test",
        ])  # fmt: skip
        await wait_for(lambda: len(notices(daemon.text())) == 4, what="the four notice lines")
        await wait_for(lambda: len(mailbox.transactions) == 2, what="two reports delivered")
        await wait_for(lambda: "status=deferred" in daemon.text(), what="the deferral")
        await wait_for(lambda: len(capable.transactions) == 2, what="both DSN next-hop deliveries")
        code, shown, err = await run_command(RELAYMAIL, "queue", "--config", str(config),
                                             "--json", "show", waiting)  # fmt: skip
        assert code == 0, err
    finally:
        assert await daemon.stop() == 0

    sent = [line for line in notices(daemon.text()) if "notice_id=none" not in line]
    assert len(sent) == 2  # the bounce and the relayed report of message 1; none of message 3
    # Message 3 came from the null sender: its notices go nowhere, and the line says so.
    assert sorted(re.findall(r"kind=(\w+), to=<>, notice_id=none", daemon.text())) == [
        "bounce", "relayed"
    ]

    smtp, local = sorted(transactions(capable), key=lambda lines: "<z@dsn.test>" in lines[1])
    assert re.fullmatch(r"MAIL FROM:<a@src\.test> SIZE=\d+ RET=HDRS ENVID=abc\+3Dd", smtp[0])
    assert smtp[1:] == [
        "RCPT TO:<x@dsn.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;X+2By@dsn.test",
        "RCPT TO:<y@dsn.test>",
    ]
    assert re.fullmatch(r"MAIL FROM:<\S+@relay\.relaymail\.test> SIZE=\d+ RET=HDRS ENVID=env\+2B1",
                        local[0])  # fmt: skip
    assert local[1:] == ["RCPT TO:<z@dsn.test> NOTIFY=SUCCESS,DELAY"]
    assert not any("NOTIFY" in line or "RET=" in line for line in envelope_lines(plain))

    found = reports(mailbox)
    assert set(found) == {"failed", "relayed"}
    bounce = found["failed"]
    per_message, [gone] = status_blocks(bounce)  # never@ (NEVER) and quiet@ (SUCCESS) left out
    assert per_message["Original-Envelope-Id"] == "QQ+1"
    assert gone["Original-Recipient"] == "rfc822;Gone+x@Plain.test"
    assert (gone["Final-Recipient"], gone["Status"]) == ("rfc822; gone@plain.test", "5.1.1")
    returned = list(bounce.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"  # RET=FULL
    [original] = returned.get_payload()  # type: ignore[misc]
    assert original["Subject"] == "dsn case"
    assert original.get_payload() == "the body itself\r\n"

    relayed = found["relayed"]
    per_message, [ok] = status_blocks(relayed)
    assert per_message["Original-Envelope-Id"] == "QQ+1"
    assert (ok["Final-Recipient"], ok["Status"]) == ("rfc822; ok@plain.test", "2.0.0")
    assert ok["Original-Recipient"] == "rfc822;OK@plain.test"
    assert ok["Remote-MTA"] == f"dns; {hop(plain)}"
    assert list(relayed.iter_parts())[2].get_content_type() == "text/rfc822-headers"

    detail = json.loads(shown)
    assert (detail["ret"], detail["envid"]) == ("FULL", "keep+2B1")
    [recipient] = detail["recipients"]
    assert (recipient["notify"], recipient["orcpt"]) == ("DELAY", "utf-8;w\\x{E9}@slow.test")


async def test_a_real_exim_with_dsn_takes_the_parameters_and_passes_them_on(
    exim: EximFactory, smtp_peer: SMTPPeerFactory, ca_file: Path
):
    sink = await smtp_peer(Script(ehlo=OFFERS_DSN))
    relay = exim(EximOptions(relay=Relay("127.0.0.1", sink.port), dsn=True))
    request = DsnRequest(Ret.FULL, "X+2B1").with_recipients(
        [("u@dest.test", RecipientDsn(Notify.SUCCESS | Notify.FAILURE,
                                      Orcpt("rfc822", "U+2Bx@dest.test")))]
    )  # fmt: skip
    config = config_for([f"127.0.0.1:{relay.port}"], ca_file=ca_file)
    [result] = await deliver(config, dsn=request)
    assert (result.status, result.dsn_passed_on) == (Status.DELIVERED, True)
    assert list((await asyncio.to_thread(relay.settle)).values()) == [Outcome.DELIVERED]
    await sink.wait_idle()
    [mail, rcpt] = envelope_lines(sink)
    assert mail.startswith("MAIL FROM:<a@sender.test>") and mail.endswith(" RET=FULL ENVID=X+2B1")
    assert rcpt == "RCPT TO:<u@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;U+2Bx@dest.test"
