"""`[server] processes = N`: workers with a queue shard each, seen and steered as one queue."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relaymail.message import Envelope
from relaymail.queue.ids import ID_SHARDS, parse_queue_id
from relaymail.queue.schema import DEFAULT_BUSY_TIMEOUT, open_database
from relaymail.queue.sqlite import SqliteStore
from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.peers.smtp_server import Script, SMTPPeer, Stage

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]  # each starts 3 processes or more


def _config(
    tmp_path: Path,
    sink: SMTPPeer,
    port: int,
    delivery: dict[str, object] | None = None,
    more: dict[str, object] | None = None,
    **queue: object,
) -> Path:
    return write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 5.0,
                     **(delivery or {})},
        "queue": {"directory": tmp_path / "queue", **queue},
        "server": {"processes": 2},
        **(more or {}),
        "routes": {"dest.test": [hop(sink)]},
        "recipient_verification": {"mode": "off"},
        # 127.0.0.1 is trusted (its connections go to any worker); 127.0.0.2-5
        # are outside clients, each kept on one worker (inbound/steering.py).
        "listener": [{"address": f"127.0.0.1:{port}", "relay_networks": ["127.0.0.1/32"],
                      "relay_domains": ["dest.test"]}],
    })  # fmt: skip


async def _submit(port: int, count: int, tag: str) -> list[str]:
    """`count` messages, each on a connection of its own from one of four outside clients:
    each client's connections go to one worker (inbound/steering.py), clients spread."""
    ids = []
    for n in range(count):
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10,
                                 source_address=(f"127.0.0.{n % 4 + 2}", 0))  # fmt: skip
        await client.connect()
        message = f"From: a@src.test\r\nTo: u@dest.test\r\nSubject: {tag}-{n}\r\n\r\nbody\r\n"
        _, reply = await client.sendmail("a@src.test", ["u@dest.test"], message)
        ids.append(reply.rsplit(" ", 1)[-1])
        await client.quit()
    return ids


async def _queue(config: Path, *args: str) -> dict[str, object]:
    code, out, err = await run_command(RELAYMAIL, "queue", *args, "--json", "-C", str(config))
    assert code == 0, err
    parsed: dict[str, object] = json.loads(out)
    return parsed


def _subjects(sink: SMTPPeer) -> list[str]:
    found = []
    for transaction in sink.transactions:
        if transaction.accepted:
            for line in transaction.data.split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    found.append(line[9:].decode())
    return found


async def _until(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_two_workers_take_mail_and_the_cli_sees_and_steers_every_shard(
    smtp_peer, tmp_path: Path
):
    sink = await smtp_peer(Script(rcpt_reply="451 4.3.0 try later"))
    port = free_port()
    config = _config(tmp_path, sink, port, retry=["1h"])
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        assert len(daemon.workers()) == 2
        ids = await _submit(port, 16, "spread")
        shards = {parse_queue_id(i) % ID_SHARDS for i in ids}  # type: ignore[operator]
        assert shards == {0, 1}  # both workers accepted mail, each into its own shard
        for client in range(4):  # and each client address met one worker only
            assert len({parse_queue_id(i) % ID_SHARDS for i in ids[client::4]}) == 1  # type: ignore[operator]
        # A trusted client (this host's applications) is spread over both workers:
        # 20 connections all on one by chance has a probability of 2 in 2**20.
        trusted = []
        for n in range(20):
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
            await client.connect()
            _, reply = await client.sendmail(
                "a@src.test", ["u@dest.test"], f"Subject: trusted-{n}\r\n\r\nx\r\n"
            )
            trusted.append(reply.rsplit(" ", 1)[-1])
            await client.quit()
        assert {parse_queue_id(i) % ID_SHARDS for i in trusted} == {0, 1}  # type: ignore[operator]
        ids += trusted
        assert (tmp_path / "queue" / "shard-1" / "queue.db").exists()
        tried = lambda: sum(line.upper().startswith("RCPT") for line in sink.lines())  # noqa: E731
        await _until(lambda: tried() >= 36)  # every message tried once, deferred

        listing = await _queue(config, "list", "--limit", "100")
        assert listing["total"] == 36
        listed = [m["id"] for m in listing["messages"]]  # type: ignore[attr-defined]
        assert listed == sorted(ids)  # merged across shards in queue order
        page = await _queue(config, "list", "--limit", "5", "--offset", "3")
        assert [m["id"] for m in page["messages"]] == sorted(ids)[3:8]  # type: ignore[attr-defined]
        stats = await _queue(config, "stats")
        assert stats["messages"] == 36
        shown = await _queue(config, "show", ids[-1])
        assert shown["id"] == ids[-1]

        # The retry reaches the worker that owns each message (its shard's events).
        sink.script = Script()
        retried = await _queue(config, "retry", "--all")
        assert retried["count"] == 36
        await _until(lambda: len(_subjects(sink)) == 36)
        expected = [f"spread-{n}" for n in range(16)] + [f"trusted-{n}" for n in range(20)]
        assert sorted(_subjects(sink)) == sorted(expected)
    finally:
        assert await daemon.stop() == 0


async def test_a_shard_beyond_the_workers_is_drained_once(smtp_peer, tmp_path: Path):
    """Mail left in shard 3 by a run with more workers is moved to worker 1 and delivered.

    One message is in both shards, as a crash between the move's two commits leaves it.
    """
    sink = await smtp_peer(Script())
    port = free_port()
    config = _config(tmp_path, sink, port)
    queue = tmp_path / "queue"
    old = SqliteStore.open(queue / "shard-3", shard=3)
    for n in range(5):
        message = f"Subject: left-{n}\r\n\r\nbody\r\n".encode()
        await old.enqueue(Envelope("a@src.test", ("u@dest.test",)), message, 1.0)
    await old.close()
    _, source = open_database(
        queue / "shard-3", None, DEFAULT_BUSY_TIMEOUT, check_same_thread=False
    )
    first = source.execute("SELECT min(id) FROM message").fetchone()[0]
    half_moved = SqliteStore.open(queue / "shard-1", shard=1)
    assert await half_moved.import_messages(source, [first]) == 1
    await half_moved.close()
    source.close()

    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        await _until(lambda: len(_subjects(sink)) == 5)
        assert sorted(_subjects(sink)) == [f"left-{n}" for n in range(5)]
        assert (await _queue(config, "stats"))["messages"] == 0
        _, left = open_database(
            queue / "shard-3", None, DEFAULT_BUSY_TIMEOUT, check_same_thread=True
        )
        assert left.execute("SELECT count(*) FROM message").fetchone()[0] == 0
        left.close()
    finally:
        assert await daemon.stop() == 0
    assert sorted(_subjects(sink)) == [f"left-{n}" for n in range(5)]  # none twice


async def test_workers_together_keep_the_destination_concurrency(smtp_peer, tmp_path: Path):
    sink = await smtp_peer(Script(delays={Stage.END_OF_DATA: 0.3}))
    port = free_port()
    delivery = {"destination_concurrency": 3, "connection_idle_time": 0.1}
    config = _config(tmp_path, sink, port, delivery)
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        ids = await _submit(port, 24, "limit")
        assert {parse_queue_id(i) % ID_SHARDS for i in ids} == {0, 1}  # type: ignore[operator]
        await _until(lambda: len(_subjects(sink)) == 24)
        # 2 + 1: the workers' shares add up to the configured total.
        assert 1 < sink.peak_connections <= 3
    finally:
        assert await daemon.stop() == 0


async def test_kill_9_of_a_worker_and_of_the_whole_group_loses_nothing(smtp_peer, tmp_path: Path):
    """Under load with processes = 2: kill -9 one worker (the supervisor starts it again),
    then kill -9 the whole process group; a last start delivers every accepted message."""
    sink = await smtp_peer(Script(delays={Stage.END_OF_DATA: 0.02}))
    port = free_port()
    config = _config(tmp_path, sink, port, retry=["0.2s"])
    accepted: set[str] = set()
    sent: set[str] = set()

    async def load(start: int, stop: asyncio.Event, source: str) -> None:
        n = start
        while not stop.is_set():
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5,
                                     source_address=(source, 0))  # fmt: skip
            try:
                await client.connect()
                for _ in range(5):
                    token = f"kill-{n}"
                    n += 1
                    sent.add(token)
                    message = f"From: a@src.test\r\nSubject: {token}\r\n\r\nbody\r\n"
                    await client.sendmail("a@src.test", ["u@dest.test"], message)
                    accepted.add(token)
                await client.quit()
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                await asyncio.sleep(0.05)  # that worker died under us; the other one takes over
            finally:
                client.close()

    async def round_of_kills(round_number: int) -> Daemon:
        daemon = Daemon(config, port, tmp_path / f"serve-{round_number}.log", new_session=True)
        await daemon.start()
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(load((round_number * 4 + i) * 100_000, stop, f"127.0.0.{i + 1}"))
            for i in range(4)
        ]
        before = len(accepted)
        await _until(lambda: len(accepted) >= before + 40 and len(_subjects(sink)) > 10)
        victim = daemon.workers()[round_number % 2]
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: victim not in daemon.workers() and len(daemon.workers()) == 2)
        again = len(accepted)
        await _until(lambda: len(accepted) >= again + 40)  # both workers take mail again
        await daemon.kill_group()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*senders), 30)
        return daemon

    logs = [await round_of_kills(n) for n in range(2)]

    final = Daemon(config, port, tmp_path / "serve-final.log")
    await final.start()
    try:
        await _until(lambda: accepted <= set(_subjects(sink)))
    finally:
        assert await final.stop() == 0
    arrived = _subjects(sink)
    assert accepted <= set(arrived)
    assert set(arrived) <= sent
    # A second copy only of a delivery in flight at a kill (the remote 250 came, our commit
    # did not): 6 worker deaths, each with at most its 10 of destination_concurrency 20.
    assert len(arrived) - len(set(arrived)) <= 6 * 10
    assert all("starting it again" in daemon.text() for daemon in logs)


async def test_metrics_count_every_worker(smtp_peer, tmp_path: Path):
    sink = await smtp_peer(Script(rcpt_replies={"late@dest.test": "451 4.3.0 try later"}))
    port, admin = free_port(), free_port()
    more = {"admin": {"address": f"127.0.0.1:{admin}"}}
    config = _config(tmp_path, sink, port, more=more, retry=["1h"])
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        ids = await _submit(port, 12, "metrics")
        assert {parse_queue_id(i) % ID_SHARDS for i in ids} == {0, 1}  # type: ignore[operator]
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
        await client.connect()
        for n in range(4):  # deferred, and so kept in one shard or the other
            await client.sendmail(
                "a@src.test", ["late@dest.test"], f"Subject: late-{n}\r\n\r\nx\r\n"
            )
        await client.quit()
        await _until(lambda: len(_subjects(sink)) == 12)
        url = f"http://127.0.0.1:{admin}/metrics"

        def sample(text: str, name: str, **labels: str) -> float:
            for family in text_string_to_metric_families(text):
                for found in family.samples:
                    if found.name == name and found.labels == labels:
                        return float(found.value)
            raise KeyError(name)

        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(30):
                while True:
                    text = (await http.get(url)).text
                    deferred = sample(text, "relaymail_deliveries_total", status="deferred")
                    waiting = sample(text, "relaymail_queue_messages", state="deferred")
                    if (deferred, waiting) == (4, 4):  # counted, and committed
                        break
                    await asyncio.sleep(0.1)
        assert sample(text, "relaymail_deliveries_total", status="sent") == 12
        assert sample(text, "relaymail_queue_messages", state="deferred") == 4
        assert sample(text, "relaymail_inbound_sessions") == 0
        assert sample(text, "relaymail_suspended_destinations") == 0
    finally:
        assert await daemon.stop() == 0


async def _reply(reader: asyncio.StreamReader) -> str:
    """One SMTP reply, its lines joined; the last line has a space after the code."""
    lines = []
    while True:
        line = (await reader.readline()).decode()
        assert line, "the server closed the connection"
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return "\n".join(lines)


async def _submit_pipelined(port: int, client: str, messages: list[bytes]) -> list[str]:
    """`messages` in one session from `client`: MAIL, RCPT and DATA of each in one write."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(client, 0))
    try:
        assert (await _reply(reader)).startswith("220")
        writer.write(b"EHLO client.src.test\r\n")
        assert "PIPELINING" in await _reply(reader)
        ids = []
        for message in messages:
            writer.write(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<u@dest.test>\r\nDATA\r\n")
            replies = [await _reply(reader) for _ in range(3)]
            assert [r[:3] for r in replies] == ["250", "250", "354"], replies
            stuffed = message.replace(b"\r\n.", b"\r\n..")
            writer.write((b"." if stuffed.startswith(b".") else b"") + stuffed + b".\r\n")
            accepted = await _reply(reader)
            assert accepted.startswith("250"), accepted
            ids.append(accepted.rsplit(" ", 1)[-1])
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return ids
    finally:
        writer.close()


def _without_trace(data: bytes) -> bytes:
    """Delivered data without the Received: field relaymail put in front (and its folds)."""
    assert data.startswith(b"Received: "), data[:80]
    end = data.index(b"\r\n")
    while data[end + 2 : end + 3] in (b" ", b"\t"):
        end = data.index(b"\r\n", end + 2)
    return data[end + 2 :]


@pytest.mark.parametrize("processes", [1, 2])
async def test_mail_deferred_then_retried_arrives_whole_as_submitted(
    smtp_peer, tmp_path: Path, processes: int
):
    """Several pipelined messages per client session, deferred at RCPT, then retried at once
    (within the idle time of the sessions that were deferred): each arrives once, its bytes
    those submitted; the first attempts carried no message (a lone dot after the 354)."""
    sink = await smtp_peer(Script(rcpt_reply="451 4.3.0 try later"))
    port = free_port()
    config = _config(tmp_path, sink, port, more={"server": {"processes": processes}},
                     retry=["1h"])  # fmt: skip
    sent: dict[str, bytes] = {}
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    try:
        for client in range(4):
            messages = []
            for n in range(4):
                tag = f"whole-{client}-{n}"
                head = f"From: a@src.test\r\nTo: u@dest.test\r\nSubject: {tag}\r\n\r\n"
                lines = [".a line that starts with a dot"]
                lines += [f"line {i} of {tag}" for i in range(1 if n < 2 else 4000)]
                messages.append((head + "".join(f"{line}\r\n" for line in lines)).encode())
                # n >= 2: beyond one 64 KiB chunk (a blob read in pieces, several writes)
            ids = await _submit_pipelined(port, f"127.0.0.{client + 1}", messages)
            sent.update(zip(ids, messages, strict=True))
        assert len(sent) == 16
        tried = lambda: sum(line.upper().startswith("RCPT") for line in sink.lines())  # noqa: E731
        await _until(lambda: tried() >= 16)
        assert all(not t.recipients and t.data == b"" for t in sink.transactions)

        sink.script = Script()
        assert (await _queue(config, "retry", "--all"))["count"] == 16
        delivered = lambda: [t for t in sink.transactions if t.recipients]  # noqa: E731
        await _until(lambda: len(delivered()) == 16)
        got = sorted(_without_trace(t.data) for t in delivered())
        assert got == sorted(sent.values())
        assert all(t.accepted and t.recipients == ("u@dest.test",) for t in delivered())
        assert len(sink.transactions) == 32  # one lone dot each before, one message each now
    finally:
        assert await daemon.stop() == 0
