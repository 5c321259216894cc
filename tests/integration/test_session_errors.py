"""How a session ends is told by the error's type, against real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relaymail.errors import ConnectFailed, ConnectionLost, ReplyTimeout, SessionError
from relaymail.smtp.session import SmtpSession

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
