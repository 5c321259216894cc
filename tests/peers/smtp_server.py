"""A scriptable, misbehaving SMTP server on loopback, for tests of the outbound client.

Theory of operation. A test describes one server's behaviour as a frozen `Script`: what it
answers at each stage, where it closes the connection (`Action.DROP`) or goes silent
(`Action.STALL`), how its STARTTLS misbehaves (`StartTLS`). `SMTPPeer` serves that script on
127.0.0.1 or ::1 with real sockets and, after STARTTLS, real TLS (`loop.start_tls`) with a
trustme certificate. Everything the client sent is recorded: every command line with the
session number and whether TLS was up (`Line`), each completed message (`Transaction`), and
per connection what TLS was negotiated (`Session`). Tests then assert on the records, e.g.
that no MAIL FROM ever crossed the wire in clear.

The server enforces nothing beyond the script: it answers RCPT without MAIL and DATA without
RCPT exactly as scripted, because the client under test is the thing being judged.

Commands are read from our own buffer rather than a StreamReader, for two reasons: pipelined
lines that arrive in one read must be answered in order, and at the STARTTLS boundary we must
see (and record) any plaintext the client sent after STARTTLS, which a StreamReader would hide
in its buffer and then hand out as if it had come through TLS.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from tests.peers.certs import DEFAULT_CERT_NAMES, server_context


class Action(enum.StrEnum):
    """What to do at a stage instead of replying. Plain "drop"/"stall" strings work too."""

    DROP = "drop"  # close the connection (FIN) without a reply
    STALL = "stall"  # never reply; keep reading (and recording) until the client gives up


class StartTLS(enum.StrEnum):
    """How the server handles the STARTTLS command (any other string is sent as the reply)."""

    OK = "ok"  # 220, then a real TLS handshake
    DROP = "drop"  # close without a reply
    SILENT = "silent"  # never reply; keep reading commands
    # 220 and `Script.starttls_injection` in one write, as a man in the middle would splice
    # them, then attempt the handshake: a careful client sees bytes behind the 220 and aborts.
    INJECT = "inject"
    GARBAGE = "garbage"  # 220, then `Script.starttls_garbage` in clear instead of a ServerHello
    EOF_AFTER_220 = "eof_after_220"  # 220, then close
    STALL = "stall"  # 220, then never answer the ClientHello


class Stage(enum.StrEnum):
    """Points of the dialogue that `Script.delays` can slow down (the greeting has its own)."""

    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"
    RSET = "rset"
    NOOP = "noop"
    QUIT = "quit"


# A reply as the test writes it:
# - str: sent verbatim, one or more complete lines ("250-a\n250 b"); CRLF is added per line;
# - list or tuple of lines "NNN text": the server writes the continuation form, "NNN-" on
#   every line but the last;
# - bytes: sent exactly, for malformed replies (bare LF, no final line, 8-bit junk);
# - Action (or "drop"/"stall"): no reply at all.
# A reply whose code is 421 is followed by closing the connection, as RFC 5321 4.2.2 allows.
Response = str | bytes | list[str] | tuple[str, ...] | Action

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "PIPELINING",
    "SIZE 10485760",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
)


@dataclass(frozen=True)
class Script:
    """How one server behaves. The defaults are a well-behaved ESMTP server with STARTTLS."""

    hostname: str = "mx.example.test"  # first line of the EHLO reply and the HELO reply
    greeting: Response | None = "220 mx.example.test ESMTP relaymail test peer"  # None: hang
    greeting_delay: float = 0.0
    # Capabilities after the hostname line; "STARTTLS" is appended while in clear if
    # `advertise_starttls`. After TLS `ehlo_after_tls` is used if given, verbatim.
    ehlo: tuple[str, ...] = DEFAULT_CAPABILITIES
    ehlo_after_tls: tuple[str, ...] | None = None
    ehlo_reply: Response | None = None  # replaces the whole EHLO reply, in clear and in TLS
    helo_reply: Response = "250 mx.example.test"
    advertise_starttls: bool = True
    starttls: StartTLS | Response = StartTLS.OK
    starttls_ready: str = "220 2.0.0 Ready to start TLS"
    starttls_injection: bytes = b"250-injected\r\n250 OK\r\n"
    starttls_garbage: bytes = b"this is not a TLS ServerHello\r\n"
    # The server certificate: None means one from `certs.peer_ca()` for `cert_names`.
    ssl_context: ssl.SSLContext | None = None
    cert_names: tuple[str, ...] = DEFAULT_CERT_NAMES
    tls_handshake_timeout: float = 5.0
    mail_reply: Response = "250 2.1.0 Ok"
    rcpt_replies: Mapping[str, Response] = field(default_factory=dict)  # address -> reply
    rcpt_reply: Response = "250 2.1.5 Ok"  # for addresses not in `rcpt_replies`
    data_reply: Response = "354 End data with <CR><LF>.<CR><LF>"
    # Done when the first data line arrives: DROP, STALL (which also stops reading, so a
    # large message fills the client's send buffer), or a reply sent before closing.
    mid_data: Response | None = None
    end_of_data_reply: Response | None = None  # None: "250 2.0.0 Ok queued as N"
    # Every Nth message this peer receives (counted over all its connections) gets this
    # reply instead: (10, "421 4.7.0 Try again later") throttles one in ten.
    every_nth_end_of_data: tuple[int, Response] | None = None
    rset_reply: Response = "250 2.0.0 Ok"
    noop_reply: Response = "250 2.0.0 Ok"
    quit_reply: Response = "221 2.0.0 Bye"
    # AUTH PLAIN (with or without an initial response) and LOGIN, each 334 answered by one
    # line; `auth_reply` answers the last one. Advertised only if `ehlo` lists "AUTH ...".
    auth_reply: Response = "235 2.7.0 Authentication successful"
    # TLS from the first byte, before the greeting (an RFC 8314 port 465); STARTTLS as usual.
    implicit_tls: bool = False
    unknown_reply: Response = "502 5.5.2 Error: command not recognized"
    delays: Mapping[Stage, float] = field(default_factory=dict)  # seconds before replying


@dataclass(frozen=True)
class Line:
    """One line the client sent outside DATA, as received."""

    session: int
    tls: bool  # True when the line came through TLS
    raw: bytes  # with its line ending, exactly as sent

    @property
    def text(self) -> str:
        return self.raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")

    @property
    def verb(self) -> str:
        """The command word in upper case: "MAIL" for "mail from:<a@b>"."""
        return self.text.split(" ", 1)[0].upper()


@dataclass(frozen=True)
class Transaction:
    """A message whose end-of-data dot arrived, whatever the server answered to it."""

    session: int
    tls: bool
    mail_from: str  # the address between < and > of the last MAIL
    mail_params: tuple[str, ...]  # ESMTP parameters of that MAIL, e.g. ("SIZE=123",)
    recipients: tuple[str, ...]  # the RCPT addresses the script answered with 2xx
    data: bytes  # CRLF lines, dot-unstuffed, without the final ".\r\n"
    reply_code: int | None  # the end-of-data reply's code; None after DROP or STALL

    @property
    def accepted(self) -> bool:
        return self.reply_code is not None and 200 <= self.reply_code < 300


@dataclass
class Session:
    """One TCP connection, updated while it runs."""

    number: int  # 1 for the first connection to this peer
    client: tuple[str, int]
    tls_version: str | None = None  # e.g. "TLSv1.3" once the handshake completed
    tls_cipher: str | None = None
    tls_error: str | None = None  # why the handshake failed, when it did
    # Bytes the client sent after STARTTLS that were already here when TLS would start:
    # CVE-2011-0411-style command injection if the client did it.
    plaintext_after_starttls: bytes = b""
    quit: bool = False  # the client sent QUIT
    ended: bool = False


_ADDRESS = re.compile(r"^\s*(?:FROM|TO):\s*<([^>]*)>(.*)$", re.IGNORECASE)


def _envelope_argument(argument: str) -> tuple[str, tuple[str, ...]]:
    match = _ADDRESS.match(argument)
    if match is None:
        return argument.strip(), ()
    return match.group(1), tuple(match.group(2).split())


def _encode(reply: str | bytes | list[str] | tuple[str, ...]) -> bytes:
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return b"".join(line.encode() + b"\r\n" for line in reply.splitlines())
    last = len(reply) - 1
    return b"".join(
        f"{line[:3]}{'-' if i < last else ' '}{line[4:]}\r\n".encode()
        for i, line in enumerate(reply)
    )


def _code(encoded: bytes) -> int | None:
    head = encoded[:3]
    return int(head) if head.isdigit() else None


def _action(response: Response | None) -> Action | None:
    if response is None:
        return Action.STALL
    if isinstance(response, str) and response in (Action.DROP, Action.STALL):
        return Action(response)
    return None


class _Connection(asyncio.Protocol):
    """One client connection: the transport callbacks feed a buffer, `run` plays the script."""

    def __init__(self, peer: SMTPPeer) -> None:
        self._peer = peer
        self._script = peer.script  # fixed for the connection, so a test may swap peer.script
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._eof = False
        self._transport: asyncio.Transport | None = None
        self._tls = False
        self._mail_from = ""
        self._mail_params: tuple[str, ...] = ()
        self._recipients: list[str] = []
        self.session: Session | None = None
        self.task: asyncio.Task[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.session = self._peer._open_session(self, transport.get_extra_info("peername"))
        self.task = asyncio.get_running_loop().create_task(self._run())
        self._peer._tasks.add(self.task)
        self.task.add_done_callback(self._peer._tasks.discard)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._arrived.set()

    def eof_received(self) -> None:
        self._eof = True
        self._arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._arrived.set()

    # input

    async def _readline(self) -> bytes | None:
        """The next line with its ending, or None once the client closed."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if self._eof:
                return None
            self._arrived.clear()
            await self._arrived.wait()

    async def _read_command(self) -> Line | None:
        raw = await self._readline()
        if raw is None:
            return None
        assert self.session is not None
        line = Line(self.session.number, self._tls, raw)
        self._peer.transcript.append(line)
        return line

    async def _stall(self, *, record: bool) -> None:
        """Answer nothing until the client closes; keep recording its command lines."""
        while True:
            if record:
                if await self._read_command() is None:
                    return
            else:
                self._buffer.clear()
                if self._eof:
                    return
                self._arrived.clear()
                await self._arrived.wait()

    # output

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        if not self._transport.is_closing():
            self._transport.write(data)

    async def _respond(self, response: Response | None, stage: Stage | None = None) -> bool:
        """Play one scripted response; False when the connection must end."""
        if stage is not None and (delay := self._script.delays.get(stage, 0.0)):
            await asyncio.sleep(delay)
        action = _action(response)
        if action is Action.DROP:
            return False
        if action is Action.STALL:
            await self._stall(record=True)
            return False
        assert response is not None and not isinstance(response, Action)
        encoded = _encode(response)
        self._write(encoded)
        return _code(encoded) != 421

    # the dialogue

    async def _run(self) -> None:
        try:
            await self._dialogue()
        finally:
            assert self.session is not None and self._transport is not None
            self.session.ended = True
            self._peer._closed(self.session)
            self._transport.close()

    async def _dialogue(self) -> None:
        if self._script.implicit_tls and not await self._start_tls():
            return
        if self._script.greeting_delay:
            await asyncio.sleep(self._script.greeting_delay)
        if not await self._respond(self._script.greeting):
            return
        commands = {
            "EHLO": self._ehlo,
            "HELO": self._helo,
            "STARTTLS": self._starttls,
            "AUTH": self._auth,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
        }
        while (line := await self._read_command()) is not None:
            verb, _, argument = line.text.partition(" ")
            command = commands.get(verb.upper())
            if command is None:
                go_on = await self._respond(self._script.unknown_reply)
            else:
                go_on = await command(argument)
            if not go_on:
                return

    def _reset_transaction(self) -> None:
        self._mail_from, self._mail_params, self._recipients = "", (), []

    async def _ehlo(self, argument: str) -> bool:
        self._reset_transaction()
        script = self._script
        if script.ehlo_reply is not None:
            return await self._respond(script.ehlo_reply, Stage.EHLO)
        if self._tls:
            keywords = script.ehlo_after_tls if script.ehlo_after_tls is not None else script.ehlo
        else:
            keywords = script.ehlo + (("STARTTLS",) if script.advertise_starttls else ())
        lines = [f"250 {script.hostname}", *(f"250 {keyword}" for keyword in keywords)]
        return await self._respond(lines, Stage.EHLO)

    async def _helo(self, argument: str) -> bool:
        self._reset_transaction()
        return await self._respond(self._script.helo_reply, Stage.HELO)

    async def _rset(self, argument: str) -> bool:
        self._reset_transaction()
        return await self._respond(self._script.rset_reply, Stage.RSET)

    async def _noop(self, argument: str) -> bool:
        return await self._respond(self._script.noop_reply, Stage.NOOP)

    async def _quit(self, argument: str) -> bool:
        assert self.session is not None
        self.session.quit = True
        self._peer._closed(self.session)  # the client is done with it: it no longer counts
        await self._respond(self._script.quit_reply, Stage.QUIT)
        return False

    async def _auth(self, argument: str) -> bool:
        mechanism, _, initial = argument.partition(" ")
        challenges = {"PLAIN": ("334 ",) if not initial else (), "LOGIN": ("334 VXNlcm5hbWU6",
                      "334 UGFzc3dvcmQ6")}.get(mechanism.upper())  # fmt: skip
        if challenges is None:
            return await self._respond("504 5.5.4 Unrecognized authentication type")
        for challenge in challenges:
            self._write(_encode(challenge))
            line = await self._read_command()
            if line is None:
                return False
            if line.text == "*":  # RFC 4954 4: the client cancels
                return await self._respond("501 5.7.0 Authentication cancelled")
        return await self._respond(self._script.auth_reply)

    async def _mail(self, argument: str) -> bool:
        self._reset_transaction()
        self._mail_from, self._mail_params = _envelope_argument(argument)
        return await self._respond(self._script.mail_reply, Stage.MAIL)

    async def _rcpt(self, argument: str) -> bool:
        address, _ = _envelope_argument(argument)
        replies = {key.casefold(): value for key, value in self._script.rcpt_replies.items()}
        response = replies.get(address.casefold(), self._script.rcpt_reply)
        if _action(response) is None:
            assert not isinstance(response, Action)
            code = _code(_encode(response))
            if code is not None and 200 <= code < 300:
                self._recipients.append(address)
        return await self._respond(response, Stage.RCPT)

    async def _starttls(self, argument: str) -> bool:
        script = self._script
        try:
            behaviour = StartTLS(script.starttls) if isinstance(script.starttls, str) else None
        except ValueError:
            behaviour = None
        if behaviour is None:
            assert not isinstance(script.starttls, StartTLS)
            return await self._respond(script.starttls, Stage.STARTTLS)
        if delay := script.delays.get(Stage.STARTTLS, 0.0):
            await asyncio.sleep(delay)
        ready = script.starttls_ready.encode() + b"\r\n"
        match behaviour:
            case StartTLS.DROP:
                return False
            case StartTLS.SILENT:
                await self._stall(record=True)
                return False
            case StartTLS.EOF_AFTER_220:
                self._write(ready)
                return False
            case StartTLS.STALL:
                self._write(ready)
                await self._stall(record=False)
                return False
            case StartTLS.GARBAGE:
                self._write(ready)
                self._write(script.starttls_garbage)
                await self._stall(record=False)
                return False
            case StartTLS.INJECT:
                self._write(ready + script.starttls_injection)
            case StartTLS.OK:
                self._write(ready)
        return await self._start_tls()

    async def _start_tls(self) -> bool:
        assert self.session is not None and self._transport is not None
        if self._buffer:
            # A correct server discards what came before the handshake (RFC 3207 section 4.2
            # leaves no room for it); we record it first, since sending it is the client's bug.
            trailing = bytes(self._buffer)
            self._buffer.clear()
            self.session.plaintext_after_starttls += trailing
            self._peer.transcript.extend(
                Line(self.session.number, False, raw) for raw in trailing.splitlines(keepends=True)
            )
        context = self._script.ssl_context or server_context(self._script.cert_names)
        try:
            transport = await asyncio.get_running_loop().start_tls(
                self._transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._script.tls_handshake_timeout,
            )
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            self.session.tls_error = f"{type(error).__name__}: {error}"
            return False
        if transport is None:
            return False
        self._transport = transport
        self._tls = True
        self._reset_transaction()
        ssl_object = transport.get_extra_info("ssl_object")
        self.session.tls_version = ssl_object.version()
        self.session.tls_cipher = ssl_object.cipher()[0]
        return True

    async def _data(self, argument: str) -> bool:
        script = self._script
        if not await self._respond(script.data_reply, Stage.DATA):
            return False
        assert not isinstance(script.data_reply, Action)  # _respond returned False for those
        if _code(_encode(script.data_reply)) != 354:
            return True
        lines: list[bytes] = []
        while (line := await self._readline()) != b".\r\n":
            if line is None:
                return False
            if not lines and script.mid_data is not None:
                return await self._abort_mid_data(script.mid_data)
            # RFC 5321 4.5.2: the client doubled every leading dot.
            lines.append(line[1:] if line.startswith(b".") else line)
        return await self._end_of_data(b"".join(lines))

    async def _abort_mid_data(self, response: Response) -> bool:
        assert self._transport is not None
        if _action(response) is Action.STALL:
            # Stop reading so the client's writes back up; the session then lasts until
            # the peer stops, since a paused transport cannot see the client close.
            self._transport.pause_reading()
            await asyncio.Event().wait()
        if _action(response) is None:
            assert not isinstance(response, Action)
            self._write(_encode(response))
        return False

    async def _end_of_data(self, data: bytes) -> bool:
        assert self.session is not None
        self._peer._transaction_count += 1
        response = self._script.end_of_data_reply
        nth = self._script.every_nth_end_of_data
        if nth is not None and self._peer._transaction_count % nth[0] == 0:
            response = nth[1]
        if response is None:
            response = f"250 2.0.0 Ok queued as {self._peer._transaction_count}"
        action = _action(response)
        code = None
        if action is None:
            assert not isinstance(response, Action)
            code = _code(_encode(response))
        self._peer.transactions.append(
            Transaction(
                session=self.session.number,
                tls=self._tls,
                mail_from=self._mail_from,
                mail_params=self._mail_params,
                recipients=tuple(self._recipients),
                data=data,
                reply_code=code,
            )
        )
        self._reset_transaction()
        return await self._respond(response, Stage.END_OF_DATA)


class SMTPPeer:
    """An SMTP server on loopback playing `script`; start and stop it with `async with`.

    `script` is read when a connection opens, so a test may assign a new one between
    connections (first attempt 421, second one accepted).
    """

    def __init__(
        self, script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if host not in ("127.0.0.1", "::1"):
            raise ValueError(f"test peers listen on loopback only, not {host!r}")
        self.script = script if script is not None else Script()
        self.host = host
        self._requested_port = port  # 0: any free port; else e.g. an MX port shared by peers
        self.transcript: list[Line] = []
        self.transactions: list[Transaction] = []
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None
        self._connections: list[_Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._transaction_count = 0
        self._open: set[int] = set()
        self.peak_connections = 0  # the most connections open at once

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the peer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        return len(self.sessions)

    def mails_per_session(self) -> dict[int, int]:
        """How many MAIL commands each connection carried, by session number."""
        counts = dict.fromkeys((s.number for s in self.sessions), 0)
        for line in self.transcript:
            if line.verb == "MAIL":
                counts[line.session] += 1
        return counts

    @property
    def tls_sessions(self) -> int:
        """Connections whose TLS handshake completed."""
        return sum(session.tls_version is not None for session in self.sessions)

    def lines(self, *, session: int | None = None, tls: bool | None = None) -> list[str]:
        """Transcript lines as text, optionally of one session or one side of STARTTLS."""
        return [
            line.text
            for line in self.transcript
            if (session is None or line.session == session) and (tls is None or line.tls == tls)
        ]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self._requested_port
        )

    async def stop(self) -> None:
        """Close the listener and every connection; no task outlives this call."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for connection in self._connections:
            if connection._transport is not None:
                connection._transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every connection so far has ended (the server side has closed it)."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.wait(list(self._tasks))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _open_session(self, connection: _Connection, client: tuple[str, int]) -> Session:
        session = Session(number=len(self.sessions) + 1, client=(client[0], client[1]))
        self.sessions.append(session)
        self._connections.append(connection)
        self._open.add(session.number)
        self.peak_connections = max(self.peak_connections, len(self._open))
        return session

    def _closed(self, session: Session) -> None:
        self._open.discard(session.number)


class SMTPPeerFactory(Protocol):
    """The `smtp_peer` fixture: start a peer that is stopped when the test ends."""

    async def __call__(
        self, script: Script | None = None, *, host: str = ..., port: int = ...
    ) -> SMTPPeer: ...
