"""The inbound idle timeout over real sockets: a 421 and one log line, then the close.

RFC 5321 4.5.3.2: a server that ends the session itself says 421 first. The
timeout is short so the tests do not wait long; nothing here measures it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from relaymail.inbound import start_listener
from relaymail.listener_settings import ListenerSettings
from relaymail.observe import LogEvent, Rejected, RejectReason
from tests.integration.inbound_harness import (
    HOSTNAME,
    LOOPBACK,
    MESSAGE,
    RELAY_DOMAIN,
    Client,
    Listen,
    MemorySpool,
    SlowSpool,
)

IDLE = 0.5
TIMEOUT_REPLY = f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"


def timeouts(caplog: pytest.LogCaptureFixture) -> list[Rejected]:
    return [
        r.event
        for r in caplog.records
        if isinstance(getattr(r, "event", None), LogEvent) and isinstance(r.event, Rejected)
    ]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a bound against a hang, not a timing claim)."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def the_rest(client: Client) -> bytes:
    """What the server sends until it closes; a reset counts as a close."""
    try:
        return await asyncio.wait_for(client.reader.read(), 10)
    except ConnectionResetError:
        return b""


async def test_a_client_idle_after_the_greeting_gets_421_then_eof(
    listen: Listen, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, _ = await listen(idle_timeout=IDLE)
    client, greeting = await clients(handle.port)
    assert greeting.code == 220
    assert str(await client.reply()) == TIMEOUT_REPLY
    assert await the_rest(client) == b""
    await until(lambda: handle.active_sessions == 0)
    [line] = timeouts(caplog)
    assert (line.client_ip, line.command, line.code, line.reply) == (
        "127.0.0.1", "connect", 421, TIMEOUT_REPLY,
    )  # fmt: skip
    assert line.detail == "idle timeout waiting for a command"
    assert tracebacks(caplog) == []


async def test_a_client_idle_after_ehlo_over_tls_gets_421_over_tls(
    listen: Listen, clients: Any, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, _ = await listen(idle_timeout=IDLE)
    client, _ = await clients(handle.port)
    assert (await client.hello_over_tls(client_tls)).code == 250
    assert str(await client.reply()) == TIMEOUT_REPLY
    assert await the_rest(client) == b""
    [line] = timeouts(caplog)
    assert (line.command, line.code) == ("EHLO client.example", 421)
    assert tracebacks(caplog) == []


async def test_a_client_idle_in_the_middle_of_data_gets_421_and_nothing_is_queued(
    listen: Listen, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, spool = await listen(idle_timeout=IDLE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    assert (await client.command("MAIL FROM:<a@client.example>")).code == 250
    assert (await client.command("RCPT TO:<b@inbound.example>")).code == 250
    assert (await client.command("DATA")).code == 354
    client.send(MESSAGE)  # and never the final "."
    assert str(await client.reply()) == TIMEOUT_REPLY
    assert await the_rest(client) == b""
    await until(lambda: handle.active_sessions == 0)
    assert spool.messages == []
    [line] = timeouts(caplog)
    assert (line.command, line.reason, line.detail) == (
        "DATA", RejectReason.IDLE_TIMEOUT, "idle timeout in message data",
    )  # fmt: skip
    assert tracebacks(caplog) == []


async def test_a_client_that_sent_starttls_and_never_handshakes_is_closed_without_a_traceback(
    listen: Listen, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, _ = await listen(idle_timeout=IDLE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    assert (await client.command("STARTTLS")).code == 220
    # Nothing can be said: not in clear after the 220, not over TLS before the handshake.
    assert await the_rest(client) == b""
    await until(lambda: handle.active_sessions == 0)
    [line] = timeouts(caplog)
    assert (line.client_ip, line.command, line.code, line.detail) == (
        "127.0.0.1", "STARTTLS", 0, "idle timeout in the TLS handshake",
    )  # fmt: skip
    assert tracebacks(caplog) == []


async def test_a_client_that_stopped_reading_does_not_hold_the_timed_out_session(
    listen: Listen, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle, _ = await listen(idle_timeout=IDLE, max_commands_per_verb=10**6)
    _, writer = await asyncio.open_connection("127.0.0.1", handle.port)
    try:
        # Replies the client never reads (some 30 MB, more than the socket buffers
        # hold), so the session waits for drain; the 421 cannot leave either.
        writer.write(b"EHLO client.example\r\n" * 200_000)
        await until(lambda: handle.active_sessions == 0)
    finally:
        writer.transport.abort()
    [line] = timeouts(caplog)
    assert (line.code, line.detail) == (421, "idle timeout answering EHLO")
    assert tracebacks(caplog) == []


# `relaymail serve` runs on uvloop: the same three endings on its transports.
UVLOOP_SESSIONS = {
    "after the greeting": (b"", TIMEOUT_REPLY.encode() + b"\r\n"),
    "in message data": (
        b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n"
        b"RCPT TO:<b@inbound.example>\r\nDATA\r\n" + MESSAGE,
        TIMEOUT_REPLY.encode() + b"\r\n",
    ),
    "after STARTTLS": (b"EHLO client.example\r\nSTARTTLS\r\n", b"220 2.0.0 Ready to start TLS\r\n"),
}


@pytest.mark.parametrize("session", UVLOOP_SESSIONS)
def test_under_uvloop_an_idle_session_ends_the_same_way(
    session: str, server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    sent, last = UVLOOP_SESSIONS[session]
    spool = MemorySpool()
    caplog.set_level(logging.INFO)

    async def scenario() -> bytes:
        settings = ListenerSettings(
            host="127.0.0.1", port=0, hostname=HOSTNAME, relay_networks=LOOPBACK,
            relay_domains=(RELAY_DOMAIN,), idle_timeout=IDLE,
        )  # fmt: skip
        handle = await start_listener(settings, spool, {}, server_tls)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
            writer.write(sent)
            try:
                received = await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
            await until(lambda: handle.active_sessions == 0)
            return received
        finally:
            await handle.close(grace=1)

    received = uvloop.run(scenario())
    assert received.endswith(last)
    assert spool.messages == []
    assert len(timeouts(caplog)) == 1
    assert tracebacks(caplog) == []


async def test_a_slow_queue_write_after_the_data_is_not_the_clients_idle_time(
    listen: Listen, clients: Any
) -> None:
    # A 421 here would make the client send the message again, though it is queued.
    spool = SlowSpool()
    handle, _ = await listen(spool, idle_timeout=IDLE)
    client, _ = await clients(handle.port)
    await client.command("EHLO client.example")
    await client.command("MAIL FROM:<a@client.example>")
    await client.command("RCPT TO:<b@elsewhere.example>")
    await client.command("DATA")
    client.send(MESSAGE + b".\r\n")
    await spool.started.wait()
    await asyncio.sleep(IDLE * 3)  # the queue's write takes longer than the idle timeout
    spool.release.set()
    assert (await client.reply()).code == 250
    assert str(await client.reply()) == TIMEOUT_REPLY  # the timer runs again after the 250
    assert len(spool.messages) == 1



def test_under_uvloop_the_shutdown_cuts_off_a_client_that_does_not_read(
    server_tls: ssl.SSLContext,
) -> None:
    # Its replies fill the transport, so the 421 at the end of the grace cannot leave:
    # the connection must end all the same, on uvloop's transports as `serve` runs them.
    async def scenario() -> int:
        settings = ListenerSettings(
            host="127.0.0.1", port=0, hostname=HOSTNAME, relay_networks=LOOPBACK,
            relay_domains=(RELAY_DOMAIN,), max_commands_per_verb=1_000_000,
        )  # fmt: skip
        handle = await start_listener(settings, MemorySpool(), {}, server_tls)
        _, writer = await asyncio.open_connection("127.0.0.1", handle.port)
        writer.transport.set_write_buffer_limits(0)
        writer.write(b"EHLO client.example\r\n" * 200_000)  # 40 MB of replies, unread
        await until(lambda: handle.active_sessions == 1)
        await asyncio.sleep(0.5)
        port = handle.port
        await handle.close(grace=0.5)
        await until(lambda: not _established_from(port))  # the server's end is gone
        writer.transport.abort()
        return handle.active_sessions

    assert uvloop.run(scenario()) == 0


def _established_from(port: int) -> bool:
    """Whether a TCP connection with local port `port` is still established (Linux)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(int(row[1].split(":")[1], 16) == port and row[3] == "01" for row in rows)
