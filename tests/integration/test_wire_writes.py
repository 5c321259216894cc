"""What goes on the wire in one write: a pipelined group's replies, a small message and its dot.

Read boundaries do not show write boundaries (the peer may read late, after
several writes arrived), so the tests count the TCP segments that carried data
to the receiving socket (Linux's tcp_info). Each write is a segment of its own
here (TCP_NODELAY, a few hundred octets on loopback); the kernel may merge some
(autocorking), never split one this small.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

from relaymail.delivery import Status
from tests.integration.conftest import MESSAGE, config_for, deliver
from tests.integration.inbound_harness import Listen

_TCPI_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (linux/tcp.h)


def data_segments_in(sock: Any) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    count: int = struct.unpack_from("I", info, _TCPI_DATA_SEGS_IN)[0]
    return count


async def test_replies_to_a_pipelined_group_go_in_one_write(listen: Listen, clients: Any) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    sock = client.writer.get_extra_info("socket")
    await client.command("EHLO client.example")
    before = data_segments_in(sock)
    client.send(
        b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@elsewhere.example>\r\n"
        b"RCPT TO:<c@elsewhere.example>\r\nDATA\r\n"
    )
    # RFC 2920 3.1: MAIL and RCPT replies wait while the next command is there.
    assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
    assert data_segments_in(sock) - before == 1
    client.send(MESSAGE + b".\r\n")
    assert (await client.reply()).code == 250
    # A client that waits for each reply gets each one: nothing is held without input.
    assert (await client.command("MAIL FROM:<a@client.example>")).code == 250
    assert (await client.command("RCPT TO:<d@elsewhere.example>")).code == 250
    assert (await client.command("RSET")).code == 250
    assert len(spool.messages) == 1


async def test_a_message_end_is_answered_with_the_next_transaction(
    listen: Listen, clients: Any
) -> None:
    handle, spool = await listen()
    client, _ = await clients(handle.port)
    sock = client.writer.get_extra_info("socket")
    await client.command("EHLO client.example")
    envelope = b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@elsewhere.example>\r\nDATA\r\n"
    client.send(envelope)
    assert [(await client.reply()).code for _ in range(3)] == [250, 250, 354]
    before = data_segments_in(sock)
    client.send(MESSAGE + b".\r\n" + envelope)  # the next transaction behind the dot
    assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 354]
    assert data_segments_in(sock) - before == 1
    assert len(spool.messages) == 1
    # A client that half-closes behind the dot still hears that its message is kept.
    client.send(MESSAGE + b".\r\nMAIL FROM:<a@client.example>\r\n")
    client.writer.write_eof()
    assert [(await client.reply()).code for _ in range(2)] == [250, 250]
    assert len(spool.messages) == 2


async def test_a_small_message_and_its_dot_go_in_one_write(ca_file: Path) -> None:
    received: list[tuple[bytes, int]] = []  # the message data, and the segments it came in

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        writer.write(b"220 sink.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-sink.test\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                before = data_segments_in(sock)
                writer.write(b"354 go on\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                received.append((data, data_segments_in(sock) - before))
                writer.write(b"250 2.0.0 kept\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            elif line.strip():
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        [result] = await deliver(config_for([f"127.0.0.1:{port}"], ca_file=ca_file))
    finally:
        server.close()
        await server.wait_closed()
    assert result.status is Status.DELIVERED
    # Dot-stuffed (".dot line" gets its second dot) and ended, in one segment.
    assert received == [(MESSAGE.replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n", 1)]
