"""Large messages through `relaymail serve`: streamed in, queued whole or not at all, sent intact.

The inbound side never holds a message whole: DATA goes piece by piece into a
temporary file and from there into the queue's SQLite body in chunks, inside
the transaction that acknowledges it. These tests run the real daemon and
prove the behaviour on the bytes (the memory figures are bench/scale.py's).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import hop
from tests.integration.daemon_process import RELAYMAIL, Daemon, free_port, run_command, write_toml
from tests.peers.smtp_server import Script

pytestmark = pytest.mark.timeout(300)

MB = 1 << 20


def big_message(size: int) -> bytes:
    """Canonical data of about ``size`` octets with what a streamed intake can get wrong:
    lines starting with dots (to unstuff), 8-bit octets, lines of every length up to 998."""
    lines = [b"From: a@src.test", b"To: u@dest.test", b"Subject: big", b""]
    total = 0
    n = 0
    while total < size:
        n += 1
        width = 1 + n * 37 % 997
        line = (b"." if n % 5 == 0 else b"") + (b"%d \xc3\xa9" % n).ljust(width, b"x")[:width]
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def stuffed(data: bytes) -> bytes:
    return (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")


async def send(port: int, data: bytes) -> asyncio.StreamWriter:
    """EHLO, MAIL, RCPT, DATA and the whole message with its dot, replies checked up to 354."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.set_write_buffer_limits(high=4 * MB)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO client.test\r\n")
    while not (line := await reader.readline()).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    commands = ((b"MAIL FROM:<a@src.test>", b"250"), (b"RCPT TO:<u@dest.test>", b"250"),
                (b"DATA", b"354"))  # fmt: skip
    for command, code in commands:
        writer.write(command + b"\r\n")
        assert (await reader.readline()).startswith(code)
    writer.write(stuffed(data) + b".\r\n")
    await writer.drain()
    writer.reader = reader  # type: ignore[attr-defined]
    return writer


async def final_reply(writer: asyncio.StreamWriter) -> bytes:
    reply = await writer.reader.readline()  # type: ignore[attr-defined]
    writer.write(b"QUIT\r\n")
    writer.close()
    return reply


async def replies(daemon: Daemon, *messages: bytes) -> list[bytes]:
    """Start the daemon, send each message on its own connection, stop it: the final replies."""
    await daemon.start()
    try:
        return [await final_reply(await send(daemon.port, message)) for message in messages]
    finally:
        assert await daemon.stop() == 0


def daemon_config(tmp_path: Path, port: int, routes: dict[str, list[str]], **listener: Any) -> Path:
    return write_toml(tmp_path / "relaymail.toml", {
        "delivery": {"helo_name": "relay.relaymail.test", "command_timeout": 30.0},
        "queue": {"directory": tmp_path / "queue", "retry": ["1h"]},
        # One process: these tests act on the files of one queue (queue.db); a worker's
        # client would queue into its own shard's files (README, "Every core").
        "server": {"processes": 1},
        "routes": routes,
        "listener": [{"address": f"127.0.0.1:{port}", "relay_networks": ["127.0.0.0/8"],
                      "max_message_size": "60M", **listener}],
    })  # fmt: skip


def queued_bodies(queue: Path) -> list[tuple[int, bytes]]:
    """(stored size, body) of every queued message, read straight from the database."""
    with sqlite3.connect(queue / "queue.db") as conn:
        return [
            (size, bytes(data))
            for size, data in conn.execute(
                "SELECT m.size, b.data FROM message AS m JOIN body AS b ON b.message_id = m.id"
            )
        ]


@pytest.mark.slow
async def test_a_50_mb_message_is_queued_and_delivered_byte_exact(smtp_peer, tmp_path: Path):
    sink = await smtp_peer(Script(advertise_starttls=False, ehlo=("8BITMIME", "SIZE 104857600")))
    port = free_port()
    daemon = Daemon(daemon_config(tmp_path, port, {"dest.test": [hop(sink)]}), port,
                    tmp_path / "serve.log")  # fmt: skip
    await daemon.start()
    message = big_message(50 * MB)
    try:
        reply = await final_reply(await send(port, message))
        assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
        queue_id = reply.split()[-1].decode()
        async with asyncio.timeout(120):
            while not sink.transactions:
                await asyncio.sleep(0.1)
    finally:
        assert await daemon.stop() == 0
    [transaction] = sink.transactions
    received, _, rest = transaction.data.partition(b"\r\nFrom: a@src.test\r\n")
    assert rest and b"From: a@src.test\r\n" + rest == message
    assert received.startswith(b"Received: from client.test")
    assert f"with ESMTP id {queue_id}".encode() in received
    [accepted] = [line for line in daemon.text().splitlines() if "relaymail.accepted: " in line]
    assert f"{queue_id}: " in accepted
    assert f"from=<a@src.test>, size={len(message)}, nrcpt=1" in accepted


async def test_lines_the_intake_starts_with_a_dot_are_stuffed_on_the_first_delivery(
    smtp_peer, tmp_path: Path
):
    """The first delivery sends the body the inbound side holds; it looks for lines to
    stuff only if one can start with "." (MessageBody.dot_lines). Each of these has one,
    from the wire, from a bare LF made CRLF, or from a fold; the last one has none."""
    sink = await smtp_peer(Script(advertise_starttls=False))
    port = free_port()
    daemon = Daemon(daemon_config(tmp_path, port, {"dest.test": [hop(sink)]}), port,
                    tmp_path / "serve.log")  # fmt: skip
    head = b"From: a@src.test\r\nTo: u@dest.test\r\nSubject: dots\r\n\r\n"
    sent_and_canonical = [
        (head + b".one\r\n..two\r\nthree\r\n", None),
        (head + b"four\n.five\r\n", head + b"four\r\n.five\r\n"),
        (head + b"x" * 990 + b"." * 20 + b"\r\n", None),  # folded within the dots
        (head + b"no dot starts a line. Not this one.\r\n", None),
    ]
    await daemon.start()
    try:
        for sent, _ in sent_and_canonical:
            assert (await final_reply(await send(port, sent))).startswith(b"250 ")
        async with asyncio.timeout(60):
            while len(sink.transactions) < len(sent_and_canonical):
                await asyncio.sleep(0.05)
    finally:
        assert await daemon.stop() == 0
    # What came after the Received: field, without the "From: " that ends it.
    arrived = {t.data.partition(b"\r\nFrom: ")[2] for t in sink.transactions}
    [fold] = [a for a in arrived if b"xxx" in a]
    assert fold.replace(b"\r\n", b"").endswith(b"x" * 990 + b"." * 20)
    assert max(len(line) for line in fold.split(b"\r\n")) <= 998
    expected = {(canonical or sent).removeprefix(b"From: ") for sent, canonical in
                sent_and_canonical[:2] + sent_and_canonical[3:]}  # fmt: skip
    assert arrived - {fold} == expected


async def test_one_octet_over_the_limit_is_refused_after_its_dot_and_nothing_is_queued(
    tmp_path: Path,
):
    port = free_port()
    limit = 3 * MB  # past the in-memory part: the refused data was on its way to a file
    config = daemon_config(tmp_path, port, {"dest.test": ["127.0.0.1:1"]},
                           max_message_size=limit)  # fmt: skip
    fits = big_message(limit - 2000)
    fits += b"y" * (limit - len(stuffed(fits)) - 2) + b"\r\n"  # the limit counts wire octets
    assert len(stuffed(fits)) == limit
    over = fits[:-2] + b"y\r\n"
    daemon = Daemon(config, port, tmp_path / "serve.log")
    over_reply, fits_reply = await replies(daemon, over, fits)
    assert over_reply.startswith(b"552 5.3.4 "), over_reply
    assert fits_reply.startswith(b"250 2.0.0 "), fits_reply
    [(size, body)] = queued_bodies(tmp_path / "queue")
    assert body.endswith(fits) and size == len(body)
    # The refused data's temporary file had no name and is gone with it.
    assert not [p for p in (tmp_path / "queue").iterdir() if p.name.startswith("tmp")]


async def test_a_message_whose_temporary_file_cannot_grow_gets_452_and_the_next_one_goes_in(
    tmp_path: Path,
):
    port = free_port()
    config = daemon_config(tmp_path, port, {"dest.test": ["127.0.0.1:1"]})
    # A file size limit on the daemon: the kernel refuses the temporary file's growth
    # past it (EFBIG) as a full disk would, while the small queue files stay below it.
    daemon = Daemon(config, port, tmp_path / "serve.log", prefix=("prlimit", f"--fsize={2 * MB}"))
    small = big_message(10_000)
    too_big, fits = await replies(daemon, big_message(3 * MB), small)
    assert too_big.startswith(b"452 4.3.1 "), too_big
    assert fits.startswith(b"250 2.0.0 "), fits
    [(_, body)] = queued_bodies(tmp_path / "queue")
    assert body.endswith(small)
    assert "cannot hold a message being received: [Errno 27] File too large" in daemon.text()


@pytest.mark.slow
async def test_a_20_mb_message_from_sendmail_is_picked_up_whole(tmp_path: Path):
    port = free_port()
    config = daemon_config(tmp_path, port, {"dest.test": ["127.0.0.1:1"]})
    daemon = Daemon(config, port, tmp_path / "serve.log")
    await daemon.start()
    message = big_message(20 * MB)
    try:
        code, _, err = await run_command(
            RELAYMAIL, "sendmail", "-C", str(config), "-f", "a@src.test", "-i", "u@dest.test",
            stdin=message.replace(b"\r\n", b"\n"),  # sendmail takes local line ends
        )  # fmt: skip
        assert (code, err) == (0, "")
        async with asyncio.timeout(60):
            while "relaymail.pickup: " not in daemon.text():
                await asyncio.sleep(0.1)
    finally:
        assert await daemon.stop() == 0
    [(size, body)] = queued_bodies(tmp_path / "queue")
    assert size == len(body) and body.endswith(message)
    picked = re.search(r"relaymail\.pickup: .* from=<a@src.test>, size=(\d+), message-id=(\S+)",
                       daemon.text())  # fmt: skip
    assert picked, daemon.text()
    # The pickup's own fields (Date, Message-ID) came in front, after the trace header.
    added = body[body.index(b"\r\nDate: ") + 2 : -len(message)]
    assert int(picked[1]) == len(added) + len(message)
    assert f"Message-ID: {picked[2]}\r\n".encode() in added


async def wal_reaches(queue: Path, size: int) -> None:
    wal = queue / "queue.db-wal"
    while not (wal.exists() and wal.stat().st_size >= size):
        await asyncio.sleep(0.001)


@pytest.mark.slow
async def test_kill_9_while_a_large_body_is_written_queues_it_whole_or_not_at_all(
    tmp_path: Path,
):
    message = big_message(40 * MB)
    # The body pages reach the WAL before the commit does (the page cache spills):
    # kill -9 when so much of it is there, in a fresh queue each time; the last round
    # waits for the 250 and kills after it.
    marks = (1 * MB, 8 * MB, 20 * MB, 32 * MB, None)
    queued = []
    for round_number, mark in enumerate(marks):
        port = free_port()
        # Nothing is delivered (the next hop refuses), so what is queued stays to be looked at.
        root = tmp_path / f"round-{round_number}"
        root.mkdir()
        config = daemon_config(root, port, {"dest.test": ["127.0.0.1:1"]})
        daemon = Daemon(config, port, root / "serve.log")
        await daemon.start()
        writer = await send(port, message)
        if mark is None:
            assert (await final_reply(writer)).startswith(b"250 ")
        else:
            await asyncio.wait_for(wal_reaches(root / "queue", mark), 60)
        await daemon.signal(signal.SIGKILL)
        await daemon.kill()
        writer.close()
        bodies = queued_bodies(root / "queue")
        for size, body in bodies:
            assert size == len(body) and body.endswith(message)
            assert body[: -len(message)].startswith(b"Received: from client.test")
        queued.append(len(bodies))
    assert queued[-1] == 1 and all(count in (0, 1) for count in queued)
