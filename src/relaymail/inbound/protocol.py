"""The inbound command loop: every command received gets its reply, whatever the client does next.

aiosmtpd's own loop (``SMTP._handle_client``) is replaced here because its
failure modes are in the loop itself, not in a command:

* EOF cancels the loop at once. Exim writes the message, the final "." and
  QUIT in one write and then calls ``shutdown(SHUT_WR)`` before it reads the
  replies; aiosmtpd queued that message and closed without the 250, so Exim
  sent it again. Here EOF is only the end of the input: the lines already
  received are answered in order (250 after the data, then 221), then the
  connection closes. The same rule ends a session whose client left before the
  greeting (a cancelled loop on a transport kept open for the half-close left
  it alive forever under uvloop).
* After it closed the transport (too many unknown commands, a verb over its
  limit) it went on reading pipelined lines and wrote to a closed TLS
  transport. Here the loop stops as soon as the transport is closing.
* A failed TLS handshake, a line over the window, EOF inside DATA or an AUTH
  exchange were tracebacks and "451 Internal error". Here they are outcomes:
  one log line, a 5xx reply or a clean close.
* Its idle timer closed the connection without a word, so the client saw EOF
  and nothing in the log said why. Here it says "421 4.4.2 ... timeout
  exceeded" first (RFC 5321 4.5.3.2, Postfix's words), in clear or over TLS,
  with one log line; a handshake still under way is only closed.

Policy stays out of this module: replies come from the ``smtp_*`` methods of
connection.InboundSMTP and the handler behind them.

aiosmtpd internals
------------------
This is the one module that uses aiosmtpd's private or undocumented names;
the rest of relaymail uses its public API only (``SMTP``'s constructor and
``smtp_*``/``push``/``challenge_auth``, ``Session``, ``Envelope``,
``AuthResult``, ``MISSING``, ``syntax``, handler hooks). They are why
pyproject.toml pins ``aiosmtpd>=1.4.6,<1.5``:

* ``SMTP._handle_client`` -- overridden: the command loop above.
* ``SMTP._create_session`` -- overridden, to give every connection an
  ``InboundSession``.
* ``SMTP._create_envelope`` -- overridden, to give every transaction an
  ``InboundEnvelope``; a fresh one (``reset_transaction``).
* ``SMTP._call_handler_hook`` -- runs ``handle_<VERB>`` with aiosmtpd's
  arguments (``call_hook``).
* ``SMTP._strip_command_keyword`` -- "FROM:"/"TO:" off the argument
  (``parse_path_argument``).
* ``_reader``, ``_writer`` (asyncio.StreamReaderProtocol's) -- the loop reads
  lines and DATA pieces itself; ``say_goodbye`` writes from another task and
  ``_timeout_cb`` from a timer.
  ``_reader._buffer`` (asyncio.StreamReader's) is looked at, never changed: a
  whole command already in it holds back a MAIL or RCPT reply (``push``), and
  its first octets tell whether the end of a message's data begun in the last
  piece read is there (``data_reader.read_data``).
* ``_reset_timeout``, ``_timeout_handle`` -- the idle timer, restarted per command
  and DATA piece, stopped from a message's end until the next command is awaited;
  overridden to move a deadline rather than make a timer each time.
* ``_timeout_cb`` -- overridden: what the idle timer does when it fires
  (a 421, then close); aiosmtpd's only closes the transport.
* ``_tls_handshake_okay``, ``_tls_protocol`` -- STARTTLS state, read by the
  loop to refuse commands after a failed handshake or before STARTTLS.
* ``_enforce_call_limit``, ``_call_limit_default``, ``_call_limit_base`` --
  what ``command_call_limit`` became; the loop counts verbs with them.
* ``_smtp_methods`` -- the verb -> ``smtp_*`` table built by ``__init__``.
* ``_auth_require_tls`` -- whether AUTH waits for TLS (EHLO's AUTH line).
* ``_Missing``, ``SMTP.__ident__`` -- the type of MISSING; the greeting text.
* Undocumented public names: ``command_size_limits``/``command_size_limit``
  (replaced per instance: aiosmtpd enlarges a class-level dict on every EHLO),
  ``line_length_limit`` (sizes the StreamReader), ``BOGUS_LIMIT``,
  ``ALLOWED_BEFORE_STARTTLS``, ``TLSSetupException``, and
  ``Session.login_data`` (a property that warns on every AUTH; shadowed).

aiosmtpd also takes every ``auth_*`` member of the protocol and the handler as
a SASL mechanism (``inspect.getmembers``), so nothing else may use that prefix.

Upgrading aiosmtpd past 1.4: diff its ``smtp.py`` for each name above (still
there, same meaning and type); read the changes to ``_handle_client`` and
``smtp_DATA``, which are replaced here rather than inherited, so a security
fix in them does not reach us by itself (the 1.4.5 SMTP-smuggling fix is
redone in ``read_message_data``); keep ``smtp_STARTTLS`` and
``connection_made`` inherited, since on the TLS transport ``connection_made``
discards the plaintext read before the handshake (STARTTLS command injection,
CVE-2024-34083); then run tests/integration/test_inbound_*.py and
test_server.py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from base64 import b64decode, b64encode
from collections.abc import Callable, Mapping
from typing import Any, AnyStr, Final, cast

from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    MISSING,
    SMTP,
    Envelope,
    Session,
    TLSSetupException,
    _Missing,
    syntax,
)

from .. import observe
from ..display import printable
from ..dsn_request import DsnRequest, RecipientDsn, Ret
from ..observe import RejectReason
from .data_reader import ClientGone, read_data
from .grammar import SmtpPath, parse_path
from .refusals import classify

__all__ = [
    "END_OF_DATA",
    "STREAM_WINDOW",
    "BareLineEnding",
    "ClientGone",
    "CommandLoop",
    "InboundSession",
    "LineError",
    "LineTooLong",
    "printable",
]

log = logging.getLogger("relaymail.server")

# What is being answered once a message's data has ended (``_answering``).
END_OF_DATA: Final = "."
# The replies that may wait for the next command's (``CommandLoop.push``).
_GROUPED: Final = frozenset({"MAIL", "RCPT", END_OF_DATA})

STREAM_WINDOW: Final = 64 * 1024
"""StreamReader limit: the largest piece DATA is read in, and the longest
line buffered before "500 5.5.2 Line too long"."""

_COMMANDS_PER_TURN: Final = 64
"""Commands a session answers from its buffer before other sessions and timers get the
event loop: pipelined by the thousand (a few hundred KiB in the buffer, each command
read without waiting), twenty clients held every listener's greeting for 38 s."""


class LineError(Exception):
    """A line the loop refuses without looking at it; ``reply`` says why."""

    reply = "500 5.5.2 Syntax error"
    reason = RejectReason.SYNTAX


class LineTooLong(LineError):
    reply = "500 5.5.2 Command line too long"
    reason = RejectReason.LINE_TOO_LONG


class BareLineEnding(LineError):
    """aiosmtpd takes a bare LF as a line end, so "RSET\\n" or "NOOP\\rRSET\\r\\n"
    would be taken as written."""

    reply = "500 5.5.2 Command lines must end in CRLF, without bare CR or LF"
    reason = RejectReason.BARE_LINE_ENDING


# RFC 5321 4.5.3.1.4 gives 512 octets, and each extension adds its share:
# SIZE 26 (RFC 1870), SMTPUTF8 10 (RFC 6531), RET+ENVID 110 (RFC 3461),
# BODY 15 (RFC 6152), AUTH= 500 (RFC 4954), REQUIRETLS 11 (RFC 8689); NOTIFY+ORCPT
# add 500 to RCPT.
COMMAND_SIZE_LIMITS: Final[Mapping[str, int]] = {
    "MAIL": 512 + 26 + 10 + 110 + 15 + 500 + 11,
    "RCPT": 1012,
}


class InboundSession(Session):
    """aiosmtpd's session plus what the policy counts per connection."""

    # aiosmtpd assigns Session.login_data after every successful AUTH, and its
    # property logs a deprecation warning each time; a plain attribute is quiet.
    login_data: Any = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.auth_failures = 0
        self.mail_started = 0.0  # wall clock at the last MAIL FROM (delays=a of its mail)


class InboundEnvelope(Envelope):
    """aiosmtpd's envelope plus what our MAIL and RCPT parameters say beyond its own fields."""

    requiretls = False  # RFC 8689: MAIL FROM carried REQUIRETLS (over TLS: connection.py)

    def __init__(self) -> None:
        super().__init__()
        self.ret: Ret | None = None  # RFC 3461: RET and ENVID (xtext as sent) of MAIL FROM
        self.envid: str | None = None
        # NOTIFY and ORCPT by recipient as accepted (the handler may have qualified it).
        self.rcpt_dsn: dict[str, RecipientDsn] = {}

    def dsn_request(self) -> DsnRequest:
        return DsnRequest(self.ret, self.envid).with_recipients(self.rcpt_dsn.items())


class CommandLoop(SMTP):
    """aiosmtpd's protocol with the command loop above; the commands are aiosmtpd's or ours."""

    # aiosmtpd sizes its StreamReader with this; only its DATA reader (not
    # used, see InboundSMTP) reads it as a line length.
    line_length_limit = STREAM_WINDOW

    waiting_for_command = False
    _reading_message_data = False  # inside read_message_data, for the idle timeout's line
    client_closed = False
    """The client sent EOF: what it sent before still gets answered."""
    _in_clear = True
    current_command = "connect"
    """The command being answered, as it may be logged (no AUTH credentials)."""
    _answering: str | None = None  # the verb being answered
    _held_replies = b""  # replies to MAIL and RCPT not written yet (``push``)
    _explained: tuple[RejectReason, str | None] | None = None
    _idle_deadline = 0.0  # loop time the idle timer waits for (_reset_timeout)
    _idle_armed = 0.0  # loop time the timer in _timeout_handle is set for

    def __init__(self, handler: Any, **settings: Any) -> None:
        super().__init__(handler, **settings)
        # aiosmtpd keeps these limits in a class-level dict that every EHLO
        # enlarges; ours are fixed and per instance.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, COMMAND_SIZE_LIMITS
        )

    # -- aiosmtpd's internals, for the commands ------------------------------

    def _create_session(self) -> InboundSession:
        return InboundSession(self.loop)

    def _create_envelope(self) -> InboundEnvelope:
        return InboundEnvelope()

    def inbound_envelope(self) -> InboundEnvelope:
        assert isinstance(self.envelope, InboundEnvelope)
        return self.envelope

    def inbound_session(self) -> InboundSession:
        # A method, not a property: aiosmtpd runs inspect.getmembers() on us
        # before there is a session.
        assert isinstance(self.session, InboundSession)
        return self.session

    def reset_transaction(self) -> None:
        """A new, empty envelope: after HELO/EHLO and at the end of every DATA."""
        self.envelope = self._create_envelope()

    async def call_hook(self, verb: str, *args: Any) -> Any:
        """The handler's ``handle_<verb>`` reply, or MISSING if it has none."""
        return await self._call_handler_hook(verb, *args)

    # Not named auth_*: aiosmtpd takes every auth_ member as a SASL mechanism.
    @property
    def tls_required_for_auth(self) -> bool:
        return bool(self._auth_require_tls)

    def parse_path_argument(self, keyword: str, arg: str | None) -> SmtpPath | None:
        """The path and parameters of "FROM:<path> params"; None if malformed."""
        rest = self._strip_command_keyword(keyword, arg or "")
        return parse_path(rest) if rest else None

    def say_goodbye(self, reply: str) -> None:
        """Send ``reply`` and close, from outside the session's own task."""
        if self.transport is not None and not self.transport.is_closing():
            held, self._held_replies = self._held_replies, b""
            self._writer.write(held + reply.encode("ascii") + b"\r\n")
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        """Write a reply; one to MAIL, RCPT or a message's end waits while the client's
        next command is here.

        A pipelined MAIL, RCPT..., DATA is then answered in one write instead of one
        per command, and the reply to a message's end goes with those of the next
        transaction when the client sent it behind the dot (RFC 2920 3.1: a server
        may hold replies until its input is empty, as Postfix's smtpd does). Only
        those: any other reply, the 354 to DATA first of all, writes every reply
        held before it, so nothing is held while the loop waits for input or across
        STARTTLS. The last complete command's reply is never held, so a client that
        half-closes behind its commands hears every reply.
        """
        response = (
            status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
            if isinstance(status, str)
            else status
        )
        waiting = self._reader._buffer  # type: ignore[attr-defined]  # listed above
        # A 421 is never held: the session closes behind it.
        if self._answering in _GROUPED and b"\n" in waiting and response[:3] != b"421":
            self._held_replies += response + b"\r\n"
            return
        held, self._held_replies = self._held_replies, b""
        if self._timeout_handle is None or self._timeout_handle.cancelled():
            self._reset_timeout()  # the queue's write is done: a client that will not read is idle
        await super().push(held + response)

    async def read_message_data(self, take: Callable[[bytes], None]) -> bool:
        """Hand the message up to CRLF "." CRLF to ``take``, piece by piece, as sent (still
        dot-stuffed); False if it is over the size limit (data_reader.read_data).

        The idle timer restarts at each piece and stops at the end: what follows
        is the server's time (``_pause_timeout``).
        """
        self._reading_message_data = True
        try:
            return await read_data(
                self._reader, self.data_size_limit or 0, take, on_piece=self._reset_timeout
            )
        finally:
            self._reading_message_data = False
            self._pause_timeout()

    # -- what subclasses decide ----------------------------------------------

    async def refuse_session(self) -> bool:
        """Answer instead of the greeting and return True to end the session at once."""
        return False

    def peer_ip(self) -> str | None:
        """The client's address, for the refusal line."""
        return None

    def explain_refusal(self, reason: RejectReason, detail: str | None = None) -> None:
        """Why the next refusal happens; `detail` goes to the log line, never to the client."""
        self._explained = (reason, detail)

    def log_refusal(self, outcome: str) -> None:
        """One line for a refused command (``outcome`` is the reply or what happened)."""
        explained, self._explained = self._explained, None
        reason, detail = explained or (None, None)
        refusal = classify(outcome, reason)
        observe.emit(
            observe.Rejected(
                None, self.peer_ip(), refusal.reason, refusal.code,
                printable(self.current_command), outcome, detail,
            )
        )  # fmt: skip

    async def refuse(self, reason: RejectReason, reply: str) -> None:
        """Send a refusal whose reason the reply's code alone does not say."""
        self.explain_refusal(reason)
        await self.push(reply)

    # -- the idle timer ------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The idle timer starts again: the deadline moves, the timer stays where it is
        unless it would fire late; when it fires early it is set again for the deadline.
        (aiosmtpd cancels and makes a timer at every line, the hot path.)"""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._idle_deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or self._idle_armed > deadline:
            if handle is not None:
                handle.cancel()
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        # The time it is set for is kept here: uvloop answers a time already past with
        # a plain Handle (call_soon's), which has no when().
        self._idle_armed = self._idle_deadline
        self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        if self._idle_deadline > self._idle_armed:  # moved on since it was set
            self._arm_idle_timer()
        else:
            self._timeout_cb()

    def _pause_timeout(self) -> None:
        """Stop the idle timer at a message's end: the queue's write that follows is the
        server's time, and a slow one must not end in a 421 (the client would send the
        message again, queued all the same). The loop starts it again for the next command."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def _timeout_cb(self) -> None:
        """Say 421 and close: the client sent no command or data for ``idle_timeout``.

        Runs as a timer callback, outside the session's task, so it never waits
        for drain: a client that sends nothing may read nothing either, and if the
        reply cannot leave at once the connection is aborted instead. Closing the
        transport ends the session's task (connection_lost cancels it), so a
        message whose data was not complete is not queued.
        """
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is None or transport.is_closing():
            return
        doing = self._idle_activity()
        self.explain_refusal(RejectReason.IDLE_TIMEOUT, f"idle timeout {doing}")
        if self._tls_protocol is not None and self._in_clear:
            # STARTTLS said 220 and no handshake followed: nothing can be said
            # in clear any more, and nothing over TLS yet.
            self.log_refusal("closed: no TLS handshake before the idle timeout")
            transport.close()
            # As for a failed handshake: the TLS layer never told us it was
            # connected, so it will not tell us it is gone.
            self.connection_lost(None)
            return
        reply = f"421 4.4.2 {self.hostname} Error: timeout exceeded"
        self.log_refusal(reply)
        held, self._held_replies = self._held_replies, b""
        self._writer.write(held + reply.encode("ascii") + b"\r\n")
        if transport.get_write_buffer_size():
            transport.abort()  # the client is not reading: close would wait for it forever
        else:
            transport.close()  # over TLS: the 421, then close_notify

    def _idle_activity(self) -> str:
        """What the session was waiting for when the idle timer fired, for the log line."""
        if self._tls_protocol is not None and self._in_clear:
            return "in the TLS handshake"
        if self.waiting_for_command:
            return "waiting for a command"
        if self._reading_message_data:
            return "in message data"
        if self._answering == "AUTH":
            return "in an AUTH exchange"
        return f"answering {self._answering}" if self._answering else "at the greeting"

    # -- the loop ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again with the TLS transport after STARTTLS.
        self._in_clear = transport.get_extra_info("sslcontext") is None
        super().connection_made(transport)

    def eof_received(self) -> bool:
        # StreamReaderProtocol's: EOF to the reader, keep the transport for
        # writing. Over TLS asyncio closes it anyway (and warns if asked not to).
        self.client_closed = True
        self._reader.feed_eof()
        return self._in_clear

    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def _handle_client(self) -> None:
        try:
            if not await self.refuse_session():
                await self.push(f"220 {self.hostname} {self.__ident__}")
                await self._serve()
        except ClientGone:
            if self.current_command not in ("connect", "QUIT"):
                log.info("lost connection during %s", printable(self.current_command))
        except ConnectionError as error:
            log.info("lost connection during %s: %s", printable(self.current_command), error)
        except TLSSetupException as error:
            cause = error.__cause__
            self.explain_refusal(RejectReason.TLS_HANDSHAKE_FAILED)
            self.log_refusal(f"TLS handshake failed: {str(cause) or type(cause).__name__}")
            # The TLS layer never told us it was connected, so it will not
            # tell us it is gone either (aiosmtpd does the same).
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(None)
        finally:
            if self.transport is not None:
                self.transport.close()

    async def _serve(self) -> None:
        calls: collections.defaultdict[str, int] = collections.defaultdict(
            lambda: self._call_limit_default, self._call_limit_base
        )
        unknown_left = BOGUS_LIMIT
        served = 0
        while self.is_open():
            served += 1
            if served % _COMMANDS_PER_TURN == 0:
                await asyncio.sleep(0)  # the next line may be buffered: nothing else yields
            self._answering = None
            if self._timeout_handle is None or self._timeout_handle.cancelled():
                self._reset_timeout()  # stopped while the server queued a message
            self.waiting_for_command = True
            try:
                line = await self.read_line()
            except LineError as error:
                self.current_command = "-"
                await self.refuse(error.reason, error.reply)
                continue
            finally:
                self.waiting_for_command = False
            command, arg = _split_command(line.rstrip(b"\r\n"))
            self._answering = command
            self.current_command = _loggable(command, arg)
            if command is None:
                await self.push("500 5.5.2 Error: bad syntax")
                continue
            limited = self.session is not None and self.session.extended_smtp
            if len(line) - 2 > (self.command_size_limits[command] if limited else 512):
                await self.refuse(RejectReason.LINE_TOO_LONG, "500 5.5.2 Command line too long")
                continue
            if not self._tls_handshake_okay and command != "QUIT":
                reply = "554 5.7.0 Command refused due to lack of security"
                await self.refuse(RejectReason.TLS_REQUIRED, reply)
                continue
            tls_missing = self.require_starttls and not self._tls_protocol
            if tls_missing and command not in ALLOWED_BEFORE_STARTTLS:
                reply = "530 5.7.0 Must issue a STARTTLS command first"
                await self.refuse(RejectReason.TLS_REQUIRED, reply)
                continue
            if self._enforce_call_limit:
                calls[command] -= 1
                if calls[command] < 0:
                    self.explain_refusal(RejectReason.TOO_MANY_COMMANDS)
                    await self._goodbye(f"421 4.7.0 {command} sent too many times")
                    continue
            method = self._smtp_methods.get(command)
            if method is None:
                unknown_left -= 1
                if unknown_left < 1:
                    self.explain_refusal(RejectReason.TOO_MANY_COMMANDS)
                    await self._goodbye("502 5.5.1 Too many unrecognized commands, goodbye")
                else:
                    await self.push("500 5.5.1 Command not recognized")
                continue
            self._reset_timeout()
            try:
                await method(arg)
            except LineError as error:
                await self.refuse(error.reason, error.reply)
            except (ClientGone, ConnectionError, TLSSetupException, asyncio.CancelledError):
                raise
            except Exception as error:
                await self.push(await self.handle_exception(error))

    async def _goodbye(self, reply: str) -> None:
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    async def read_line(self) -> bytes:
        """The next line, CRLF included; LineError if it is not one we read."""
        reader = self._reader
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            # Octets without a line end before EOF are not a command.
            raise ClientGone from None
        except asyncio.LimitOverrunError as overrun:
            # Drop the line to its end, so the next one is read as a line.
            consumed = overrun.consumed
            while True:
                await reader.read(consumed)
                try:
                    await reader.readuntil(b"\n")
                    break
                except asyncio.IncompleteReadError:
                    raise ClientGone from None
                except asyncio.LimitOverrunError as more:
                    consumed = more.consumed
            raise LineTooLong from None
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise BareLineEnding
        return line

    # -- commands whose aiosmtpd version ends the loop by cancelling it -------

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: QUIT")
            return
        await self._goodbye("221 2.0.0 Bye")

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> _Missing | bytes:
        """aiosmtpd's, with the continuation line read like a command line."""
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(raw) if encode_to_b64 else raw))
        try:
            blob = (await self.read_line()).strip()
        except LineTooLong:
            # RFC 4954 4: the exchange ends with this reply.
            reply = "500 5.5.6 Authentication exchange line is too long"
            await self.refuse(RejectReason.LINE_TOO_LONG, reply)
            return MISSING
        if blob == b"*":
            await self.push("501 5.7.0 Authentication cancelled")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except ValueError:  # binascii.Error is one
            await self.push("501 5.5.2 Cannot decode base64")
            return MISSING


def _split_command(line: bytes) -> tuple[str | None, str | None]:
    """(verb upper-cased, argument) of a command line; verb None if it is not ASCII or empty.

    The argument is decoded as UTF-8 with surrogateescape (aiosmtpd's choice),
    so 8-bit octets survive and are refused where an address is parsed.
    """
    verb, _, argument = line.partition(b" ")
    if not verb or not verb.isascii():
        return None, None
    stripped = argument.strip()
    return verb.upper().decode("ascii"), (
        stripped.decode("utf-8", "surrogateescape") if stripped else None
    )


def _loggable(command: str | None, arg: str | None) -> str:
    if command is None:
        return "-"
    if command == "AUTH" and arg:
        return f"AUTH {arg.split()[0]}"  # never the initial response (credentials)
    return command if arg is None else f"{command} {arg}"
