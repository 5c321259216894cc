"""The log events of a running daemon, as text lines and as JSON, against real next hops.

One daemon per form receives mail over SMTP and delivers it to real loopback servers that
accept, refuse a recipient, defer one, answer STARTTLS with 454, reply with control
characters, or are not there at all; a raw client makes it refuse things. The JSON lines
must fit the README's schema; the text lines must say the same facts.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.conftest import hop
from tests.integration.daemon_process import Daemon, free_port, run_command, write_toml
from tests.log_schema import schema
from tests.peers.smtp_server import Script, SMTPPeer, SMTPPeerFactory

pytestmark = pytest.mark.timeout(120)

# What a hostile next hop answers to the data: CR, ANSI escapes, a would-be log line.
HOSTILE_REPLY = b"250 2.0.0 Ok\rFORGED: to=<victim@x.test>, status=sent\x1b[2K\x1b[31m red\r\n"
HOSTILE_TEXT = "250 2.0.0 Ok\rFORGED: to=<victim@x.test>, status=sent\x1b[2K\x1b[31m red"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.-]+): (?P<rest>.*)$"
)
EXPECTED_DELIVERIES = 7  # sent, clear, later, gone, hostile, down, down again


@dataclass
class Run:
    daemon: Daemon
    queue_ids: dict[str, str]  # the recipient (first) of each message -> its queue id
    peers: dict[str, SMTPPeer]


async def smtp_dialogue(port: int, lines: list[bytes]) -> list[str]:
    """Send each line, read one reply after each (after the greeting first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        replies.append(await _reply(reader))
        for line in lines:
            writer.write(line + b"\r\n")
            await writer.drain()
            replies.append(await _reply(reader))
    finally:
        writer.close()
    return replies


async def _reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = (await reader.readline()).decode()
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)


async def send(port: int, *recipients: str, headers: str = "") -> str:
    args = ["--from", "a@src.test", "--helo", "client.test", "--header", "Subject: logs",
            "--to", ",".join(recipients)]  # fmt: skip
    if headers:
        args += ["--header", headers]  # replaces the one swaks would write
    code, out, err = await run_command("swaks", "--server", f"127.0.0.1:{port}", *args)
    assert code == 0, out + err
    queued = re.search(r"250 2\.0\.0 Ok: queued as (\w+)", out)
    assert queued, out
    return queued[1]


async def run_daemon(tmp_path: Path, smtp_peer: SMTPPeerFactory, ca_file: Path,
                     options: tuple[str, ...]) -> Run:  # fmt: skip
    peers = {
        "sent": await smtp_peer(Script()),
        "clear": await smtp_peer(Script(starttls="454 4.7.0 TLS not available")),
        "mixed": await smtp_peer(Script(rcpt_replies={
            "later@mixed.test": "451 4.3.0 try later",
            "gone@mixed.test": "550 5.1.1 no such user",
        })),
        "hostile": await smtp_peer(Script(end_of_data_reply=HOSTILE_REPLY)),
    }
    port = free_port()
    routes = {f"{name}.test": [hop(peer)] for name, peer in peers.items()}
    routes["src.test"] = [hop(peers["sent"])]  # the bounce goes back to the sender
    routes["down.test"] = [f"127.0.0.1:{free_port()}"]  # nothing listens
    config = write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 3.0},
        "tls": {"ca_file": ca_file},
        "queue": {"directory": tmp_path / "queue"},
        # One process: the second message to down.test must meet what the first one taught
        # the scheduler (each worker keeps its own, README "Every core"), and the refusals
        # must be logged in the order they were made.
        "server": {"processes": 1},
        "routes": routes,
        # The next hops' own replies are what these lines report, not a verification probe's.
        "recipient_verification": {"mode": "off"},
        "listener": [{
            "address": f"127.0.0.1:{port}", "mode": "relay", "relay_networks": ["10.0.0.0/8"],
            "relay_domains": [*routes], "max_message_size": 100_000, "max_recipients": 2,
        }],
    })  # fmt: skip
    daemon = Daemon(config, port, tmp_path / "serve.log", options=options)
    await daemon.start()
    ids = {}
    try:
        message_id = "Message-Id: <logs-1@src.test>"  # swaks spells it so
        ids["u@sent.test"] = await send(port, "u@sent.test", headers=message_id)
        ids["u@clear.test"] = await send(port, "u@clear.test")
        ids["later@mixed.test"] = await send(port, "later@mixed.test", "gone@mixed.test")
        ids["u@hostile.test"] = await send(port, "u@hostile.test")
        ids["u@down.test"] = await send(port, "u@down.test")
        await wait_for(lambda: daemon.text().count("connect-failed") >= 1)
        ids["v@down.test"] = await send(port, "v@down.test")
        replies = await smtp_dialogue(port, [
            b"EHLO client.test", b"RCPT TO:<early@sent.test>",
            b"MAIL FROM:<a@src.test> SIZE=999999999", b"MAIL FROM:<a@src.test>",
            b"RCPT TO:<x@elsewhere.example>", b"RCPT TO:<" + b"x" * 2000 + b"@sent.test>",
            b"RCPT TO:<a@sent.test>", b"RCPT TO:<b@sent.test>", b"RCPT TO:<c@sent.test>",
            b"DATA", b"Received: from a by b\r\n" * 60 + b"\r\nlooping\r\n.",
        ])  # fmt: skip
        assert [r[:3] for r in replies] == [
            "220", "250", "503", "552", "250", "554", "500", "250", "250", "452", "354", "554"
        ]
        marker = '"event": "delivery"' if options else "relaymail.delivery: "
        # The deliveries, and the bounce's own (to the sender, through the "sent" peer).
        await wait_for(lambda: daemon.text().count(marker) >= EXPECTED_DELIVERIES + 1)
    finally:
        assert await daemon.stop() == 0
    return Run(daemon, ids, peers)


async def wait_for(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- JSON


def json_events(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        entry = json.loads(line)  # every line is one JSON object, nothing else
        if "event" in entry:
            yield entry


async def test_json_events_fit_the_schema_and_carry_each_fact(
    tmp_path: Path, smtp_peer: SMTPPeerFactory, ca_file: Path
) -> None:
    run = await run_daemon(tmp_path, smtp_peer, ca_file, ("--log-json",))
    text = run.daemon.text()
    assert text.isascii() and all(line.isprintable() for line in text.splitlines())
    events = list(json_events(text))
    validator = jsonschema.Draft202012Validator(schema())
    for entry in events:
        validator.validate(entry)
    ids = run.queue_ids
    deliveries = {
        e["to"]: e for e in events if e["event"] == "delivery" and e["id"] in ids.values()
    }

    sent = deliveries["u@sent.test"]
    sent_port = run.peers["sent"].port
    assert (sent["id"], sent["status"], sent["dsn"]) == (ids["u@sent.test"], "sent", "2.0.0")
    assert sent["relay"] == f"127.0.0.1[127.0.0.1]:{sent_port}" and sent["from"] == "a@src.test"
    assert sent["tls"] == "TLSv1.3/verified" and sent["policy"] == "may(default level)"
    assert sent["decision"].startswith("tls: ") and sent["reply"].startswith("250 2.0.0 ")
    assert sent["delay"] >= 0 and len(sent["delays"].split("/")) == 4
    [accepted] = [e for e in events if e["event"] == "accepted" and e["id"] == sent["id"]]
    assert accepted["message-id"] == "<logs-1@src.test>" and accepted["nrcpt"] == 1
    assert (accepted["client"], accepted["from"], accepted["helo"], accepted["tls"]) == (
        "unknown[127.0.0.1]", "a@src.test", "client.test", "clear"
    )  # fmt: skip
    verified = tls_steps(events, sent["id"])
    assert (verified["tls_event"], verified["tls_action"]) == ("verified", "use_tls")
    assert verified["tls"].startswith("TLSv1.3/TLS_") and verified["tls"].endswith("/verified")

    clear = deliveries["u@clear.test"]
    assert (clear["status"], clear["tls"]) == ("sent", "clear")
    assert clear["decision"].startswith("continued-clear: STARTTLS refused with a 4xx reply")
    fallback = tls_steps(events, clear["id"])
    assert (fallback["result"], fallback["tls_event"], fallback["tls_action"]) == (
        "continued-clear", "tempfail", "continue_clear"
    )  # fmt: skip

    later, gone = deliveries["later@mixed.test"], deliveries["gone@mixed.test"]
    assert (later["status"], later["dsn"], later["reply"]) == ("deferred", "4.3.0",
                                                               "451 4.3.0 try later")  # fmt: skip
    assert later["next"] is not None and later["id"] == gone["id"] == ids["later@mixed.test"]
    assert (gone["status"], gone["dsn"], gone["reply"]) == ("bounced", "5.1.1",
                                                            "550 5.1.1 no such user")  # fmt: skip
    [notice] = [e for e in events if e["event"] == "notice" and e["id"] == gone["id"]]
    assert (notice["kind"], notice["to"]) == ("bounce", "a@src.test") and notice["notice_id"]

    assert deliveries["u@hostile.test"]["reply"] == HOSTILE_TEXT  # the value, not its escape

    down, suspended = deliveries["u@down.test"], deliveries["v@down.test"]
    assert (down["status"], down["relay"], down["reply"]) == ("deferred", "none", None)
    assert [e["result"] for e in events if e["event"] == "attempt" and e["id"] == down["id"]] == [
        "connect-failed"
    ]
    assert (suspended["status"], suspended["dsn"]) == ("deferred", "4.4.1")
    assert suspended["reason"].startswith("delivery temporarily suspended: destination down")

    rejects = [(e["client"], e["reason"], e["code"]) for e in events if e["event"] == "reject"]
    assert rejects == [
        ("unknown[127.0.0.1]", "bad-sequence", 503),
        ("unknown[127.0.0.1]", "message-too-big", 552),
        ("unknown[127.0.0.1]", "relay-denied", 554),
        ("unknown[127.0.0.1]", "line-too-long", 500),
        ("unknown[127.0.0.1]", "too-many-recipients", 452),
        ("unknown[127.0.0.1]", "mail-loop", 554),
    ]


def tls_steps(events: list[dict[str, Any]], queue_id: str) -> dict[str, Any]:
    [step] = [
        e for e in events
        if e["event"] == "attempt" and e["id"] == queue_id and e["tls_event"] is not None
    ]  # fmt: skip
    return step


# --------------------------------------------------------------------------- text


async def test_text_lines_say_the_same_and_grep_id_finds_every_line_of_a_message(
    tmp_path: Path, smtp_peer: SMTPPeerFactory, ca_file: Path
) -> None:
    run = await run_daemon(tmp_path, smtp_peer, ca_file, ())
    lines = run.daemon.text().splitlines()
    parsed = [TEXT_LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    assert not [line for line in lines if "FORGED" in line.split(": ", 1)[0]]
    ids = run.queue_ids

    def lines_of(queue_id: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for match in parsed:
            assert match is not None
            if match["rest"].startswith(f"{queue_id}: "):
                found.setdefault(match["logger"], []).append(match["rest"])
        return found

    sent = lines_of(ids["u@sent.test"])
    assert sorted(sent) == ["relaymail.accepted", "relaymail.attempt", "relaymail.delivery"]
    [accepted] = sent["relaymail.accepted"]
    assert "client=unknown[127.0.0.1], helo=client.test, message-id=<logs-1@src.test>, " in accepted
    [delivery] = sent["relaymail.delivery"]
    port = run.peers["sent"].port
    assert delivery.startswith(
        f"{ids['u@sent.test']}: to=<u@sent.test>, from=<a@src.test>, "
        f"relay=127.0.0.1[127.0.0.1]:{port}, delay="
    )
    facts = ", dsn=2.0.0, tls=TLSv1.3/verified, policy=may(default level), decision=tls: "
    assert facts in delivery
    assert re.search(r", delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, ", delivery)
    assert re.search(r", status=sent \(250 2\.0\.0 .*\)$", delivery)

    [clear] = lines_of(ids["u@clear.test"])["relaymail.delivery"]
    assert ", tls=clear, policy=may(default level), decision=continued-clear: STARTTLS" in clear
    [hostile] = lines_of(ids["u@hostile.test"])["relaymail.delivery"]
    assert hostile.endswith(
        "status=sent (250 2.0.0 Ok\\rFORGED: to=<victim@x.test>, status=sent\\x1b[2K\\x1b[31m red)"
    )
    [down] = lines_of(ids["v@down.test"])["relaymail.delivery"]
    assert ", dsn=4.4.1, " in down
    assert "status=deferred (delivery temporarily suspended: destination down (" in down
    rejects = [m["rest"] for m in parsed if m and m["logger"] == "relaymail.reject"]
    assert [r.split(", reason=")[1].split(",")[0] for r in rejects] == [
        "bad-sequence", "message-too-big", "relay-denied", "line-too-long",
        "too-many-recipients", "mail-loop",
    ]
    assert all(r.startswith("NOQUEUE: client=unknown[127.0.0.1], command=") for r in rejects)
