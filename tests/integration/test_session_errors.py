"""How a session ends is told by the error's type, against real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relaymail.body import MessageBody
from relaymail.errors import ConnectFailed, ConnectionLost, ReplyTimeout, SessionError
from relaymail.message_data import IN_MEMORY
from relaymail.smtp.client import Verb
from relaymail.smtp.session import WRITE_BLOCK, SmtpSession

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def open_session(port: int) -> SmtpSession:
    return await SmtpSession.open("127.0.0.1", port, connect_timeout=2, command_timeout=0.3)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_is_connect_failed():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: the kernel refuses
        with pytest.raises(ConnectFailed):
            await open_session(port)


async def test_a_server_that_closes_is_connection_lost(serve):
    async def close_at_once(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    session = await open_session(await serve(close_at_once))
    with pytest.raises(ConnectionLost):
        await session.read_reply()
    session.abort()


async def test_a_silent_server_is_reply_timeout(serve):
    async def stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    session = await open_session(await serve(stay_silent))
    with pytest.raises(ReplyTimeout):
        await session.read_reply()
    session.abort()


async def test_a_malformed_reply_is_a_plain_session_error(serve):
    async def babble(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello there\r\n")
        await writer.drain()

    session = await open_session(await serve(babble))
    with pytest.raises(SessionError) as caught:
        await session.read_reply()
    assert type(caught.value) is SessionError
    session.abort()


async def test_a_server_that_stops_reading_holds_one_block_of_a_body_in_memory():
    # A body in memory is one chunk (MessageBody.of); it still goes out in blocks, each
    # once the transport is below its high-water mark: a stalled server holds a block or
    # two, not the whole body.
    async def stop_after_354(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stalls\r\n")
        for reply in (b"250 stalls\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            await reader.readline()
            writer.write(reply)
        writer.transport.pause_reading()
        await asyncio.sleep(30)

    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small kernel buffers
    listening.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(stop_after_354, sock=listening)
    session = await open_session(listening.getsockname()[1])
    transport = session._wire.transport
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        await session.read_reply()
        await session.command(Verb.EHLO, "client.test")
        session.write([(Verb.MAIL, "FROM:<a@src.test>"), (Verb.RCPT, "TO:<b@dest.test>")])
        await session.read_reply()
        await session.read_reply()
        assert (await session.command(Verb.DATA)).code == 354
        body = MessageBody.of(b"x" * 1000 + b"\r\n" * (IN_MEMORY // 2 - 600))
        assert body.chunk_size == body.size  # one chunk
        sending = asyncio.ensure_future(session.send_message(body.chunks(), 5))
        await asyncio.sleep(0.15)  # the kernel's buffers are full: the first block waits
        assert 0 < transport.get_write_buffer_size() <= 2 * WRITE_BLOCK < body.size
        with pytest.raises(ReplyTimeout, match="stopped reading the message"):
            await sending
    finally:
        session.abort()
        server.close()
