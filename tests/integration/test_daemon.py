"""`relaymail serve` end to end: real clients (swaks) in, real servers out, real signals."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from relaymail.inbound.pickup import open_maildrop
from tests.integration.conftest import hop
from tests.integration.daemon_process import (
    RELAYMAIL,
    Daemon,
    free_port,
    run_command,
    write_toml,
)
from tests.peers.smtp_server import Script, SMTPPeer

pytestmark = pytest.mark.timeout(90)


def make_config(
    tmp_path: Path, port: int, ca_file: Path, routes: dict[str, list[str]], **sections: Any
) -> Path:
    config: dict[str, Any] = {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": tmp_path / "queue"},
        "routes": routes,
        "listener": [
            {"address": f"127.0.0.1:{port}", "mode": "relay", "relay_networks": ["127.0.0.0/8"]}
        ],
    }
    for name, table in sections.items():
        config[name] = {**config.get(name, {}), **table} if isinstance(table, dict) else table
    return write_toml(tmp_path / "relaymail.toml", config)


async def start_daemon(tmp_path: Path, config: Path, port: int) -> Daemon:
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    return daemon


async def swaks(port: int, *args: str) -> tuple[int, str]:
    code, out, err = await run_command(
        "swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", *args
    )
    return code, out + err


async def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def dsns(peer: SMTPPeer) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(t.data, policy=email.policy.default)  # type: ignore[misc]
        for t in peer.transactions
        if t.mail_from == ""
    ]


async def test_swaks_in_loopback_server_out_over_tls(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]})
    daemon = await start_daemon(tmp_path, config, port)
    try:
        code, out = await swaks(port, "--from", "a@src.test", "--to", "u@dest.test",
                                "--header", "Subject: e2e", "--body", "hello")  # fmt: skip
        assert code == 0, out
        queued = re.search(r"250 2\.0\.0 Ok: queued as (\w+)", out)
        assert queued, out
        await wait_for(lambda: peer.transactions, what="delivery")
    finally:
        assert await daemon.stop() == 0
    [transaction] = peer.transactions
    assert transaction.tls and transaction.recipients == ("u@dest.test",)
    message = email.message_from_bytes(transaction.data, policy=email.policy.default)
    assert message["Subject"] == "e2e"
    assert "by relay.relaymail.test (relaymail) with ESMTP id " + queued[1] in " ".join(
        message["Received"].split()
    )
    log = daemon.text()
    assert "status=sent" in log and "tls=TLSv1" in log


async def test_starttls_4xx_server_gets_mail_in_clear_unless_tls_is_required(
    smtp_peer, ca_file, tmp_path
):
    peer = await smtp_peer(Script(starttls="454 4.7.0 TLS not available"))
    port = free_port()
    routes = {"may.test": [hop(peer)], "bank.test": [hop(peer)]}
    config = make_config(tmp_path, port, ca_file, routes,
                         **{"tls.policy": {"bank.test": "encrypt"}})  # fmt: skip
    daemon = await start_daemon(tmp_path, config, port)
    try:
        for rcpt in ("u@may.test", "u@bank.test"):
            code, out = await swaks(port, "--from", "a@src.test", "--to", rcpt)
            assert code == 0, out
        await wait_for(lambda: peer.transactions and "status=deferred" in daemon.text())
        code, out, _ = await run_command(RELAYMAIL, "queue", "--config", str(config),
                                         "--json", "list")  # fmt: skip
    finally:
        await daemon.stop()
    [transaction] = peer.transactions
    assert transaction.recipients == ("u@may.test",) and not transaction.tls
    assert not [line for line in peer.transcript if line.text.endswith("<u@bank.test>")]
    listing = json.loads(out)
    assert listing["total"] == 1
    log = daemon.text()
    assert "tempfail_fallback is on; continue in clear" in log
    assert "policy encrypt never sends mail in clear" in log


async def bounce_for(
    smtp_peer: Any, ca_file: Path, tmp_path: Path, rcpt_reply: str | bytes, subject: str
) -> SMTPPeer:
    """Send a message to gone@dest.test, which gets `rcpt_reply`; the mailbox with the DSN."""
    dest = await smtp_peer(Script(rcpt_replies={"gone@dest.test": rcpt_reply}))
    mailbox: SMTPPeer = await smtp_peer(Script())
    port = free_port()
    routes = {"dest.test": [hop(dest)], "src.test": [hop(mailbox)]}
    daemon = await start_daemon(tmp_path, make_config(tmp_path, port, ca_file, routes), port)
    try:
        code, out = await swaks(port, "--from", "a@src.test", "--to", "gone@dest.test",
                                "--header", f"Subject: {subject}")  # fmt: skip
        assert code == 0, out
        await wait_for(lambda: dsns(mailbox), what="a bounce")
    finally:
        await daemon.stop()
    return mailbox


async def test_5xx_recipient_bounces_to_the_sender_as_rfc3464(smtp_peer, ca_file, tmp_path):
    mailbox = await bounce_for(smtp_peer, ca_file, tmp_path, "550 5.1.1 no such user",
                               "will bounce")  # fmt: skip
    [bounce] = dsns(mailbox)
    assert mailbox.transactions[0].recipients == ("a@src.test",)
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    parts = [part.get_content_type() for part in bounce.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = next(
        p for p in bounce.iter_parts() if p.get_content_type() == "message/delivery-status"
    )
    fields = status.as_string()
    assert "Final-Recipient: rfc822; gone@dest.test" in fields
    assert "Action: failed" in fields and "Status: 5.1.1" in fields
    assert "550 5.1.1 no such user" in fields
    assert "Subject: will bounce" in bounce.as_string()
    assert bounce["Auto-Submitted"] == "auto-replied"


async def test_dead_destination_is_retried_warned_then_bounced(smtp_peer, ca_file, tmp_path):
    mailbox = await smtp_peer(Script())
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    routes = {"dead.test": [dead], "src.test": [hop(mailbox)]}
    fast = {"retry": ["0.4s"], "lifetime": "3s", "delay_warning": "1s"}
    config = make_config(tmp_path, port, ca_file, routes, queue=fast)
    daemon = await start_daemon(tmp_path, config, port)
    try:
        code, out = await swaks(port, "--from", "a@src.test", "--to", "u@dead.test")
        assert code == 0, out
        await wait_for(lambda: len(dsns(mailbox)) >= 2, timeout=30, what="warning and bounce")
    finally:
        await daemon.stop()
    warning, bounce = dsns(mailbox)
    assert "Action: delayed" in warning.as_string()
    assert "Action: failed" in bounce.as_string()
    assert "Connection refused" in bounce.as_string()
    attempts = daemon.text().count("result=connect-failed")
    assert attempts >= 4, daemon.text()  # retried on schedule, not just once
    assert "gave up after" in daemon.text()


def outside_relay(port: int, domain: str) -> list[dict[str, Any]]:
    """A relay listener for `domain` that trusts no loopback client."""
    return [{"address": f"127.0.0.1:{port}", "mode": "relay",
             "relay_networks": ["192.0.2.0/24"], "relay_domains": [domain]}]  # fmt: skip


async def test_no_open_relay(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    port = free_port()
    config = make_config(
        tmp_path, port, ca_file, {"dest.test": [hop(peer)], "*": [hop(peer)]},
        listener=outside_relay(port, "dest.test"),
    )
    daemon = await start_daemon(tmp_path, config, port)
    try:
        code, out = await swaks(port, "--from", "a@src.test", "--to", "victim@elsewhere.test")
        assert code != 0
        assert "554 5.7.1" in out
        code, out = await swaks(port, "--from", "a@src.test", "--to", "u@dest.test")
        assert code == 0, out
        await wait_for(lambda: peer.transactions)
    finally:
        await daemon.stop()
    assert [t.recipients for t in peer.transactions] == [("u@dest.test",)]


async def test_a_forged_sender_to_an_unknown_relay_recipient_gets_550_and_no_bounce(
    smtp_peer, ca_file, tmp_path
):
    known = {"known@plain.test": "250 2.1.5 Ok"}
    next_hop = await smtp_peer(Script(rcpt_replies=known, rcpt_reply="550 5.1.1 No such user"))
    forged = await smtp_peer(Script())  # where a bounce to the forged sender would go
    port = free_port()
    config = make_config(
        tmp_path, port, ca_file, {"plain.test": [hop(next_hop)], "innocent.test": [hop(forged)]},
        listener=outside_relay(port, "plain.test"),
    )
    daemon = await start_daemon(tmp_path, config, port)
    try:
        code, out = await swaks(port, "--from", "victim@innocent.test", "--to", "nobody@plain.test")
        assert code != 0
        assert "550 5.1.1 <nobody@plain.test>: Recipient address rejected" in out
        code, out = await swaks(port, "--from", "victim@innocent.test", "--to", "known@plain.test")
        assert code == 0, out
        await wait_for(lambda: next_hop.transactions)
    finally:
        await daemon.stop()
    assert [t.recipients for t in next_hop.transactions] == [("known@plain.test",)]
    assert forged.connections == 0
    assert "verify recipient=<nobody@plain.test> verdict=rejected" in daemon.text()
    assert (tmp_path / "queue" / "recipients.db").is_file()


async def test_sighup_reload_refuses_a_bad_config_and_keeps_running(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script())
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]})
    daemon = await start_daemon(tmp_path, config, port)
    good = config.read_text()
    try:
        config.write_text(good + "\n[bogus]\nx = 1\n")
        await daemon.signal(signal.SIGHUP)
        await wait_for(lambda: "reload refused" in daemon.text())
        code, out = await swaks(port, "--from", "a@src.test", "--to", "u@dest.test")
        assert code == 0, out
        await wait_for(lambda: peer.transactions)
        config.write_text(good.replace("relay.relaymail.test", "renamed.relaymail.test"))
        await daemon.signal(signal.SIGHUP)
        await wait_for(lambda: "reloaded" in daemon.text())
        code, out = await swaks(port, "--from", "a@src.test", "--to", "v@dest.test")
        assert code == 0 and "renamed.relaymail.test" in out, out
    finally:
        assert await daemon.stop() == 0
    assert "bogus: unknown key" in daemon.text()


async def test_sendmail_and_the_queue_tools(smtp_peer, ca_file, tmp_path):
    peer = await smtp_peer(Script(rcpt_reply="451 4.7.1 greylisted"))
    port = free_port()
    # A short connection cache: the peer's new script applies to new connections only.
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]},
                         queue={"retry": ["1h"]},
                         delivery={"connection_idle_time": 0.2})  # fmt: skip
    message = b"To: u@dest.test\nBcc: hidden@dest.test\nSubject: from cron\n\n.\nnot the end\n"
    open_maildrop(tmp_path / "queue")  # as a daemon that ran before
    code, _, err = await run_command(RELAYMAIL, "sendmail", "-C", str(config), "-t", "-i",
                                     "-f", "cron@src.test", stdin=message)  # fmt: skip
    assert code == 0, err
    queue = [RELAYMAIL, "queue", "--config", str(config), "--json"]

    daemon = await start_daemon(tmp_path, config, port)
    try:
        await wait_for(lambda: daemon.text().count("status=deferred") >= 2)
        code, out, _ = await run_command(*queue, "list")
        [listed] = json.loads(out)["messages"]
        queue_id = listed["id"]
        assert listed["sender"] == "cron@src.test" and listed["recipients"]["deferred"] == 2
        code, out, _ = await run_command(*queue, "show", queue_id)
        detail = json.loads(out)
        assert {r["state"] for r in detail["recipients"]} == {"deferred"}
        assert "451 4.7.1 greylisted" in detail["recipients"][0]["last_reply"]
        assert (await run_command(*queue, "hold", queue_id))[0] == 0
        peer.script = Script()  # the greylisting is over
        assert (await run_command(*queue, "retry", queue_id))[0] == 0
        await asyncio.sleep(1.5)
        # While greylisted, the session ended in an empty DATA (RFC 2920 3.1).
        assert not [t for t in peer.transactions if t.recipients]  # held: not delivered
        assert (await run_command(*queue, "release", queue_id))[0] == 0
        await wait_for(lambda: [t for t in peer.transactions if t.recipients])
    finally:
        await daemon.stop()
    [transaction] = [t for t in peer.transactions if t.recipients]
    assert set(transaction.recipients) == {"u@dest.test", "hidden@dest.test"}
    assert b"Bcc" not in transaction.data
    assert b"\r\n.\r\nnot the end\r\n" in transaction.data  # -i: a lone dot is data
    assert b"Message-ID: <" in transaction.data and b"Date: " in transaction.data
    code, out, _ = await run_command(*queue, "stats")
    assert json.loads(out)["messages"] == 0
    code, _, err = await run_command(*queue, "show", "NOSUCHID")
    assert code == 66 and "no message" in err


async def test_full_queue_answers_452_and_keeps_what_it_accepted(smtp_peer, ca_file, tmp_path):
    # A real SQLITE_FULL: the queue's size cap stands in for a full disk.
    peer = await smtp_peer(Script(greeting="421 4.3.2 not now"))  # nothing leaves the queue
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"dest.test": [hop(peer)]},
                         queue={"max_size": "400K", "retry": ["1h"]})  # fmt: skip
    daemon = await start_daemon(tmp_path, config, port)
    body = ("x" * 70 + "\n") * 850  # 60 KB in lines of legal length
    accepted = 0
    try:
        for _ in range(20):
            code, out = await swaks(port, "--from", "a@src.test", "--to", "u@dest.test",
                                    "--body", body)  # fmt: skip
            if code != 0:
                break
            accepted += 1
        assert "452 4.3.1" in out, out[-500:]
    finally:
        await daemon.stop()
    assert accepted >= 1
    code, out, _ = await run_command(RELAYMAIL, "queue", "--config", str(config), "--json",
                                     "stats")  # fmt: skip
    assert json.loads(out)["messages"] == accepted  # every 250 is in the queue
