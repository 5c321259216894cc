"""Clients that half-close (shutdown(SHUT_WR)) still get a reply to every command they sent.

Exim's smtp transport writes the message, the final "." and QUIT in one write, then shuts
down its sending side before it reads the replies. Every shape of that is tried here with a
raw socket, under both event loops the daemon may run on (asyncio's and uvloop, which
`relaymail serve` uses), and once end to end through `relaymail serve` to a sink.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relaymail.inbound import start_listener
from relaymail.listener_settings import ListenerSettings
from tests.integration.conftest import hop
from tests.integration.daemon_process import free_port
from tests.integration.inbound_harness import HOSTNAME, LOOPBACK, MemorySpool
from tests.integration.test_daemon import make_config, start_daemon, wait_for
from tests.peers.smtp_server import Script

LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}

ENVELOPE = (
    b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n"
    b"RCPT TO:<b@elsewhere.example>\r\nDATA\r\n"
)
MESSAGE = b"Subject: half-close\r\n\r\nHello.\r\n.\r\n"


@dataclass(frozen=True)
class Shape:
    sent: bytes
    replies: tuple[int, ...]
    """The code of every reply, the greeting first, up to the server's close."""
    messages: int


SHAPES = {
    "eof_after_quit_as_exim_does": Shape(
        ENVELOPE + MESSAGE + b"QUIT\r\n", (220, 250, 250, 250, 354, 250, 221), 1
    ),
    "eof_after_the_final_dot": Shape(ENVELOPE + MESSAGE, (220, 250, 250, 250, 354, 250), 1),
    "eof_in_the_middle_of_data": Shape(
        ENVELOPE + b"Subject: cut\r\n\r\nHal", (220, 250, 250, 250, 354), 0
    ),
    "eof_before_the_greeting": Shape(b"", (220,), 0),
    "eof_during_pipelined_rcpts": Shape(
        b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n"
        + b"".join(b"RCPT TO:<r%d@elsewhere.example>\r\n" % i for i in range(3)),
        (220, 250, 250, 250, 250, 250),
        0,
    ),
    "eof_inside_a_command_line": Shape(b"EHLO client.example\r\nNOOP", (220, 250), 0),
}


def reply_codes(raw: bytes) -> tuple[int, ...]:
    """The code of each complete reply (multi-line replies count once)."""
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"", raw  # nothing after the last CRLF
    return tuple(int(line[:3]) for line in lines[:-1] if line[3:4] == b" ")


async def half_closed_session(port: int, sent: bytes) -> bytes:
    """Send ``sent`` in one write, shut down our side, and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a bound against a hang, not a timing claim)."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def no_internal_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or "451 4.3.0" in r.getMessage()]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_half_closed_client_gets_every_reply_then_the_server_closes(
    loop: str, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = SHAPES[shape]
    spool = MemorySpool()
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        settings = ListenerSettings(
            host="127.0.0.1", port=0, hostname=HOSTNAME, relay_networks=LOOPBACK
        )
        handle = await start_listener(settings, spool, {}, None)
        try:
            raw = await half_closed_session(handle.port, expected.sent)
            assert reply_codes(raw) == expected.replies
            await until(lambda: handle.active_sessions == 0)
        finally:
            await handle.close(grace=1)

    LOOPS[loop](scenario())
    assert len(spool.messages) == expected.messages
    assert no_internal_errors(caplog) == []


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_closes_before_the_greeting_leaves_no_session_behind(loop: str) -> None:
    async def scenario() -> None:
        settings = ListenerSettings(host="127.0.0.1", port=0, hostname=HOSTNAME)
        handle = await start_listener(settings, MemorySpool(), {}, None)
        try:
            for _ in range(5):
                _, writer = await asyncio.open_connection("127.0.0.1", handle.port)
                writer.close()
            await until(lambda: handle.active_sessions == 0)
        finally:
            await handle.close(grace=1)

    LOOPS[loop](scenario())


async def test_exim_shaped_client_through_the_daemon_is_delivered_once(
    smtp_peer: Any, ca_file: Path, tmp_path: Path
) -> None:
    sink = await smtp_peer(Script())
    port = free_port()
    config = make_config(tmp_path, port, ca_file, {"elsewhere.example": [hop(sink)]})
    daemon = await start_daemon(tmp_path, config, port)
    try:
        raw = await half_closed_session(port, ENVELOPE + MESSAGE + b"QUIT\r\n")
        assert reply_codes(raw) == (220, 250, 250, 250, 354, 250, 221)
        await wait_for(lambda: "status=sent" in daemon.text(), what="delivery")
    finally:
        assert await daemon.stop() == 0
    assert [t.recipients for t in sink.transactions] == [("b@elsewhere.example",)]
    log = daemon.text()
    assert log.count("relaymail.accepted: ") == 1 and log.count("status=sent") == 1
    assert "Traceback" not in log


async def test_starttls_after_a_half_close_ends_the_session_instead_of_waiting_for_a_handshake(
    listen: Any,
) -> None:
    handle, _ = await listen()
    raw = await half_closed_session(handle.port, b"EHLO client.example\r\nSTARTTLS\r\n")
    # 220 to STARTTLS only if the command was read before the EOF arrived; then the TLS
    # layer sees the EOF. Either way no handshake is waited for (asyncio's limit is 60 s).
    assert reply_codes(raw) in ((220, 250), (220, 250, 220))
    await until(lambda: handle.active_sessions == 0)
