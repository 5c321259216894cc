"""The asyncio layer around ClientConnection: one TCP connection to one server address.

All protocol decisions stay in client.py and delivery.py; this module moves
bytes, enforces timeouts on every read and write, and performs the TLS
upgrade. One timeout mechanism (asyncio.timeout) serves every wait.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from .. import observe
from ..errors import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    RelaymailError,
    RemoteProtocolError,
    ReplyTimeout,
    SessionError,
)
from ..message import DotStuffer
from .client import ClientConnection, ReplyEvent, Verb
from .reply import Reply

# How long a QUIT may wait for its reply: the mail is settled, only the peer's log gains.
QUIT_TIMEOUT = 5.0
WRITE_BLOCK = 64 * 1024
"""Octets of message data per write. Each waits until the server has read the one
before, so a server that stops reading holds one block in the transport, not the
message, and each has its own timeout (RFC 5321 4.5.3.2.5 times each block)."""


@dataclass(frozen=True, slots=True)
class ImplicitTls:
    """TLS from the first byte (an smtps:// route, RFC 8314 3.3); checks come after."""

    context: ssl.SSLContext
    server_hostname: str | None  # SNI; None for an address


class _Wire(asyncio.Protocol):
    """Feeds received bytes to the sans-IO connection and wakes the reader."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.closed: str | None = None
        self.error: RemoteProtocolError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._peer: tuple[str, int] | None = None  # (ip, port) while connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = (str(peer[0]), int(peer[1])) if peer else ("-", 0)
        observe.emit(observe.OutboundConnection(observe.Direction.OPENED, *self._peer))

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.conn.receive_data(data)
        except RemoteProtocolError as exc:
            self.error = exc
            if self.transport is not None:
                self.transport.abort()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = self.closed or "the server closed the connection"
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:  # once per connection: STARTTLS keeps this protocol
            observe.emit(observe.OutboundConnection(observe.Direction.CLOSED, *self._peer))
            self._peer = None
        self.closed = self.closed or (f"connection lost: {exc}" if exc else "connection closed")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_for_data(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def draining(self) -> bool:
        """Whether a write has to wait for the server to read (the transport paused us)."""
        return self._paused and self.closed is None

    async def drain(self) -> None:
        while self._paused and self.closed is None:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain


class SmtpSession:
    """An open connection to one SMTP server address."""

    def __init__(self, wire: _Wire, address: str, port: int, command_timeout: float) -> None:
        self._wire = wire
        self.conn = wire.conn
        self.address = address
        self.port = port
        self.command_timeout = command_timeout
        self.ssl_object: ssl.SSLObject | None = None
        self.replies_seen = 0

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        command_timeout: float,
        implicit_tls: ImplicitTls | None = None,
    ) -> SmtpSession:
        """Connect; with `implicit_tls`, complete the TLS handshake before the greeting."""
        loop = asyncio.get_running_loop()
        wire = _Wire(ClientConnection())
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: wire, address, port)
        except TimeoutError:
            raise ConnectTimeout(f"connect timed out after {connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectFailed(f"connect failed: {exc.strerror or exc}") from None
        session = cls(wire, address, port, command_timeout)
        if implicit_tls is not None:
            await session._handshake(implicit_tls.context, implicit_tls.server_hostname)
            try:
                session.conn.implicit_tls_established()
            except RemoteProtocolError as exc:
                session.abort()
                raise SessionError(f"TLS handshake failed: {exc}") from None
        return session

    @property
    def local_address(self) -> str | None:
        """Our end's IP address (TLS reports name it as the sending MTA)."""
        transport = self._wire.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return str(sockname[0]) if sockname else None

    @property
    def is_usable(self) -> bool:
        """Open, idle and with nothing unsolicited from the server (for connection reuse)."""
        return (
            self._wire.closed is None
            and self._wire.error is None
            and self.conn.awaiting_replies == 0
            and not self.conn.has_unread_data
        )

    def write(self, commands: Sequence[tuple[Verb, str]]) -> None:
        """Send commands in one write (a pipelined group, or a single command)."""
        self._check_open()
        payload = b"".join(self.conn.send(verb, arg) for verb, arg in commands)
        assert self._wire.transport is not None
        self._wire.transport.write(payload)

    async def read_reply(self, timeout: float | None = None) -> ReplyEvent:
        """The next reply; ReplyTimeout when none comes in time, ConnectionLost when closed."""
        event = self._next_event()
        if event is not None:  # it came with an earlier one (a pipelined group): no timer
            return event
        limit = self.command_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    event = self._next_event()
                    if event is not None:
                        return event
                    if self._wire.error is not None:
                        raise SessionError(f"protocol error: {self._wire.error}")
                    if self._wire.closed is not None:
                        raise ConnectionLost(self._wire.closed)
                    await self._wire.wait_for_data()
        except TimeoutError:
            raise ReplyTimeout(f"no reply within {limit:g}s") from None

    def _next_event(self) -> ReplyEvent | None:
        try:
            event = self.conn.next_event()
        except RemoteProtocolError as exc:  # a reply out of step with the commands
            raise SessionError(f"protocol error: {exc}") from None
        if event is not None:
            self.replies_seen += 1
        return event

    async def command(self, verb: Verb, argument: str = "") -> Reply:
        self.write([(verb, argument)])
        return (await self.read_reply()).reply

    def write_terminator(self) -> None:
        """End a DATA that carries no message (every recipient refused, yet 354)."""
        assert self._wire.transport is not None
        self._wire.transport.write(self.conn.send_message(at_line_start=True))

    async def send_message(
        self, chunks: Iterable[bytes], timeout: float, *, dot_lines: bool = True
    ) -> Reply:
        """Write canonical data, dot-stuffed chunk by chunk, and its terminator; the reply
        may take `timeout` (RFC 5321 4.5.3.2.6 gives the server ten minutes after the dot).
        `dot_lines=False`: no line starts with "." (MessageBody.dot_lines), none is looked for.

        A chunk is read while the one before is written, in WRITE_BLOCK blocks; the
        last block goes in one write with the dot (a small message: one write in
        all). When `chunks` raises (the body became unreadable) the connection is
        aborted before the dot: the server drops the transaction, and the
        recipients are not delivered a truncated message.
        """
        self._check_open()
        stuffer = DotStuffer(stuff=dot_lines)
        stuffed = b""  # the chunk before the one being read: written once that one came
        try:
            for chunk in chunks:
                if stuffed:
                    await self._write_blocks(stuffed)
                stuffed = stuffer.feed(chunk)
            self._check_open()
        except BaseException:
            self.abort()
            raise
        await self._write_blocks(stuffed, self.conn.send_message(stuffer.at_line_start))
        return (await self.read_reply(timeout)).reply

    async def _write_blocks(self, data: bytes, end: bytes = b"") -> None:
        """`data` in WRITE_BLOCK slices of one view (not copied), each written once the
        server has read the one before; `end` goes in one write with the last."""
        transport = self._wire.transport
        assert transport is not None
        view = memoryview(data)
        last = max(0, len(data) - 1) // WRITE_BLOCK * WRITE_BLOCK  # where the last block starts
        for start in range(0, last, WRITE_BLOCK):
            self._check_open()  # a server that hung up mid-message reads no more
            transport.write(view[start : start + WRITE_BLOCK])
            await self._drained()
        self._check_open()
        transport.writelines((view[last:], end))
        await self._drained()

    async def _drained(self) -> None:
        if not self._wire.draining:  # nothing to wait for: no timer
            return
        try:
            async with asyncio.timeout(self.command_timeout):
                await self._wire.drain()
        except TimeoutError:
            raise ReplyTimeout(
                f"the server stopped reading the message for {self.command_timeout:g}s"
            ) from None

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade after an accepted STARTTLS; the handshake counts as a command (timeout)."""
        await self._handshake(context, server_hostname)
        self.conn.tls_established()

    async def _handshake(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        loop = asyncio.get_running_loop()
        transport = self._wire.transport
        assert transport is not None
        try:
            # The outer timeout is not redundant: CPython's start_tls can wait forever
            # when the peer closes the connection in the middle of the handshake.
            async with asyncio.timeout(self.command_timeout):
                new = await loop.start_tls(
                    transport,
                    self._wire,
                    context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=self.command_timeout,
                )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            transport.abort()
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            raise SessionError(f"TLS handshake failed: {reason}") from None
        if new is None:
            raise SessionError("TLS handshake failed: the connection closed")
        self._wire.transport = new
        self.ssl_object = new.get_extra_info("ssl_object")

    def _check_open(self) -> None:
        if self._wire.closed is not None:
            raise ConnectionLost(self._wire.closed)

    async def quit(self) -> None:
        """Close politely: QUIT where the session still can send it, a short wait, then close.

        RFC 5321 4.1.1.10: a client ends the session with QUIT, also after a policy refusal
        (Exim and Postfix log a session without it as lost). It goes over TLS when TLS is up.
        """
        try:
            if self._wire.closed is None and self._wire.error is None and self.conn.can_quit:
                self.write([(Verb.QUIT, "")])
                await self.read_reply(timeout=min(self.command_timeout, QUIT_TIMEOUT))
        except (SessionError, RelaymailError):
            pass  # the server's QUIT reply changes nothing: the mail is already settled
        finally:
            self.abort()

    def abort(self) -> None:
        self._wire.closed = self._wire.closed or "closed by relaymail"
        if self._wire.transport is not None:
            self._wire.transport.close()
