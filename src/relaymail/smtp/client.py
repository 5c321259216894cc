"""Sans-IO SMTP client protocol.

Theory of operation: `ClientConnection` knows the SMTP session's state and
nothing about sockets. The caller asks it for the bytes of a command
(`send`), hands it whatever the network produced (`receive_data`), and pulls
`ReplyEvent`s pairing each reply with the command that caused it. Several
commands may be outstanding at once (RFC 2920 pipelining); replies come back
in command order.

Everything that affects the session state lives in this file, in the
`_TRANSITIONS` table below. The STARTTLS boundary is explicit: after a 2xx to
STARTTLS the caller must call `take_trailing_data()`; non-empty trailing data
means bytes arrived in clear behind the 220, which is an injection attack.

AUTH (RFC 4954) is a dialogue: each 334 asks for one more line (`AUTH_RESPONSE`)
until a 235 or a refusal. The connection knows whether TLS is up (implicit TLS
from the start, or after STARTTLS) and refuses to emit AUTH otherwise, whatever
the caller's policy said: credentials never cross the wire in clear.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass, field

from ..errors import (
    CleartextAuthError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsafeCommandError,
)
from .reply import Reply, ReplyParser


class Verb(enum.Enum):
    GREETING = "greeting"  # not sent: the server's banner is the reply to connecting
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "auth-response"  # a line answering a 334 challenge: no verb on the wire
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    MESSAGE = "message"  # the data and its terminating dot
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"

    # Enum's own hash is Python code (its name's hash); members are singletons compared
    # by identity, so the object's hash is as good, and this one keys the hot tables.
    __hash__ = object.__hash__


def _out_of_step(verb: Verb, code: int) -> bool:
    """A reply no server gives that command: 354 answers DATA alone, 334 AUTH alone,
    and DATA's success is 354, never 2xx (RFC 5321 4.3.2, RFC 4954 4)."""
    if verb is Verb.DATA:
        return 200 <= code < 300 or (300 <= code < 400 and code != 354)
    if verb in (Verb.AUTH, Verb.AUTH_RESPONSE):
        return 300 <= code < 400 and code != AUTH_CONTINUE
    return 300 <= code < 400


class State(enum.Enum):
    CONNECTED = "connected"  # waiting for the greeting
    REFUSED = "refused"  # greeting refused: only QUIT (RFC 5321 3.1), 421 excepted
    GREETED = "greeted"  # greeting accepted; EHLO/HELO needed
    READY = "ready"  # hello done; no transaction
    MAIL = "in-mail"  # MAIL sent
    RCPT = "in-rcpt"  # at least one RCPT sent
    DATA = "in-data"  # DATA sent; the message may follow once 354 arrives
    TLS = "tls-pending"  # STARTTLS sent; nothing may follow until TLS is up
    AUTH = "in-auth"  # AUTH sent, or a 334 answered: only the next response may follow
    CLOSED = "closed"

    __hash__ = object.__hash__  # as Verb's


# (state, verb) -> state the session is in once the command is sent.
# Commands are judged against the state as it will be after everything already
# sent succeeds, which is exactly what pipelining assumes.
_TRANSITIONS: dict[tuple[State, Verb], State] = {
    (State.GREETED, Verb.EHLO): State.READY,
    (State.GREETED, Verb.HELO): State.READY,
    (State.READY, Verb.EHLO): State.READY,
    (State.READY, Verb.HELO): State.READY,
    (State.READY, Verb.STARTTLS): State.TLS,
    (State.READY, Verb.AUTH): State.AUTH,
    (State.AUTH, Verb.AUTH_RESPONSE): State.AUTH,
    (State.READY, Verb.MAIL): State.MAIL,
    (State.MAIL, Verb.RCPT): State.RCPT,
    (State.RCPT, Verb.RCPT): State.RCPT,
    (State.RCPT, Verb.DATA): State.DATA,
    (State.DATA, Verb.MESSAGE): State.READY,
}
# Allowed from any state in which the server is listening to commands.
_ANYTIME = {Verb.RSET: State.READY, Verb.NOOP: None, Verb.QUIT: State.CLOSED}

# Commands after which a pipelining client must wait for the reply before
# sending more (RFC 2920 3.1: EHLO, DATA, STARTTLS, QUIT... change the state).
SYNC_POINTS = frozenset(
    {Verb.EHLO, Verb.HELO, Verb.STARTTLS, Verb.AUTH, Verb.AUTH_RESPONSE, Verb.DATA, Verb.MESSAGE,
     Verb.QUIT}
)  # fmt: skip
# RFC 4954 4: a 334 asks for one more line of the AUTH dialogue.
AUTH_CONTINUE = 334


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    verb: Verb
    reply: Reply


# RFC 5321 4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); each ehlo-param is
# printable US-ASCII without spaces. A line that breaks this is not a capability at all.
_EHLO_LINE = re.compile(r" *([A-Za-z0-9][A-Za-z0-9-]*)((?: +[!-~]+)*) *")
# Parameter grammars of the keywords whose parameters we act on; a keyword whose parameters
# break its grammar is treated as absent (RFC 1870 6: SIZE is `[1*DIGIT]`; the bound keeps
# int() cheap, and 20 digits are already beyond any real limit).
_PARAMS = {"SIZE": re.compile(r"[0-9]{0,20}")}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server's EHLO reply advertises (or nothing, after HELO)."""

    esmtp: bool
    keywords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            match = _EHLO_LINE.fullmatch(line)
            if match is None:
                continue
            word, params = match.group(1).upper(), " ".join(match.group(2).split())
            grammar = _PARAMS.get(word)
            if grammar is None or grammar.fullmatch(params):
                keywords[word] = params
        return cls(esmtp=True, keywords=keywords)

    @classmethod
    def from_helo(cls) -> Capabilities:
        return cls(esmtp=False)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.keywords

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """The SASL mechanisms AUTH offers (RFC 4954 3), upper case; empty without AUTH."""
        return frozenset(self.keywords.get("AUTH", "").upper().split())

    @property
    def size_limit(self) -> int | None:
        """The SIZE limit (RFC 1870); None when absent or 0 (no limit)."""
        value = self.keywords.get("SIZE")
        return int(value) or None if value else None


class ClientConnection:
    """The client side of one SMTP session, without I/O."""

    def __init__(self) -> None:
        self.state = State.CONNECTED
        # Whether TLS carries the session: from the first byte on an implicit-TLS port
        # (RFC 8314 3.3), or from the handshake after STARTTLS on.
        self.tls = False
        self.authenticated = False
        self._planned = State.CONNECTED  # state once every sent command succeeds
        self._parser = ReplyParser()
        self._awaiting: deque[Verb] = deque([Verb.GREETING])
        self._tls_boundary = False
        # Whether the server may still hold a transaction (MAIL accepted, no
        # reply to the message yet): then the next MAIL needs an RSET first,
        # or a server that kept the envelope after a failed DATA says 503.
        self.in_transaction = False

    @property
    def awaiting_replies(self) -> int:
        return len(self._awaiting)

    @property
    def can_quit(self) -> bool:
        """Whether QUIT may go now: the server is reading commands and owes us no reply.

        Never while STARTTLS is pending or its handshake has not completed (a reply to
        STARTTLS still due, or bytes injected behind its 220), nor inside the message data.
        """
        return (
            not self._tls_boundary
            and not self._awaiting
            and self.state in (State.REFUSED, State.GREETED, State.READY, State.MAIL, State.RCPT)
        )

    @property
    def has_unread_data(self) -> bool:
        """Bytes the server sent that no command asked for (an idle-timeout 421, say)."""
        return self._parser.has_data

    def send(self, verb: Verb, argument: str = "") -> bytes:
        """The wire form of a command; raises LocalProtocolError when out of order."""
        if verb is Verb.MESSAGE:
            raise LocalProtocolError("use send_message() for message data")
        if verb in (Verb.AUTH, Verb.AUTH_RESPONSE) and not self.tls:
            raise CleartextAuthError(f"{verb.value} refused: the session is not under TLS")
        if verb is Verb.AUTH and self.authenticated:
            # RFC 4954 4: after a successful AUTH, no more AUTH in the session.
            raise LocalProtocolError("AUTH after a successful AUTH")
        if verb is Verb.AUTH_RESPONSE:
            line = argument
        else:
            line = f"{verb.value} {argument}" if argument else verb.value
        # The last line of defence against injection: an address or name with a
        # line break would end this command and start another (NUL truncates in C peers).
        if "\r" in line or "\n" in line or "\0" in line:
            raise UnsafeCommandError(f"line break or NUL inside a command: {line!r}")
        try:
            wire = line.encode("utf-8") + b"\r\n"
        except UnicodeEncodeError:  # a lone surrogate: undecodable bytes from argv or a file
            raise UnsafeCommandError(f"not encodable as UTF-8: {line!r}") from None
        self._advance(verb)
        return wire

    def send_message(self, at_line_start: bool) -> bytes:
        """The terminator to write after the dot-stuffed canonical message data.

        `at_line_start`: the data was empty or ended with CRLF.
        """
        self._advance(Verb.MESSAGE)
        return b".\r\n" if at_line_start else b"\r\n.\r\n"

    def _advance(self, verb: Verb) -> None:
        # Inside the AUTH dialogue the server reads every line as a response (RFC 4954 4).
        in_auth = self._planned is State.AUTH and verb is not Verb.AUTH_RESPONSE
        if self._tls_boundary or in_auth or self._planned in (State.TLS, State.CLOSED):
            raise LocalProtocolError(f"{verb.value} sent in state {self._planned.value}")
        if verb in _ANYTIME:
            if self._planned is State.CONNECTED:
                raise LocalProtocolError(f"{verb.value} before the greeting")
            if self._planned is State.REFUSED and verb is not Verb.QUIT:
                raise LocalProtocolError(f"{verb.value} after a refused greeting")
            target = _ANYTIME[verb]
            if target is not None:
                self._planned = target
        else:
            try:
                self._planned = _TRANSITIONS[(self._planned, verb)]
            except KeyError:
                raise LocalProtocolError(
                    f"{verb.value} not allowed in state {self._planned.value}"
                ) from None
        if self._planned is State.CONNECTED:
            raise LocalProtocolError("no command may precede the greeting")
        self._awaiting.append(verb)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the network; raises RemoteProtocolError on a malformed reply."""
        if self._tls_boundary:
            # Bytes after the 220 to STARTTLS, before the handshake: keep them
            # unparsed so take_trailing_data() reports them; never act on them.
            self._parser.feed_raw(data)
            return
        self._parser.feed(data)

    def next_event(self) -> ReplyEvent | None:
        """The next complete reply paired with its command, or None when more data is needed."""
        if self._tls_boundary or not self._awaiting:
            return None
        reply = self._parser.next_reply()
        if reply is None:
            return None
        verb = self._awaiting.popleft()
        if _out_of_step(verb, reply.code):
            # What a reply the server sent unasked (a second one to a dot) makes of
            # the rest: each one paired with the command before. Not to be guessed at.
            raise RemoteProtocolError(f"{reply} in reply to {verb.value}: replies out of step")
        self._apply(verb, reply)
        return ReplyEvent(verb, reply)

    def _apply(self, verb: Verb, reply: Reply) -> None:
        ok = reply.is_success or (verb is Verb.DATA and reply.code == 354)
        if verb is Verb.MAIL:
            self.in_transaction = ok
        elif verb is Verb.MESSAGE or (verb is Verb.RSET and ok):
            self.in_transaction = False
        if verb is Verb.GREETING:
            # RFC 5321 3.1: after a 554 greeting the server waits for our QUIT.
            refused = State.CLOSED if reply.code == 421 else State.REFUSED
            self.state = State.GREETED if ok else refused
        elif verb is Verb.QUIT or reply.code == 421:
            # RFC 5321 3.8: a 421 to any command (STARTTLS's too) closes the channel.
            self.state = State.CLOSED
        elif verb is Verb.STARTTLS:
            # RFC 3207 4: after a refusal the session continues as before.
            self._tls_boundary = ok
            self.state = State.TLS if ok else State.READY
        elif verb in (Verb.AUTH, Verb.AUTH_RESPONSE):
            # 334: the dialogue goes on; anything else ends it (235 success, RFC 4954 6).
            self.state = State.AUTH if reply.code == AUTH_CONTINUE else State.READY
            self.authenticated = self.authenticated or reply.code == 235
        elif verb is Verb.DATA and ok:
            # Even with no recipient accepted: the server now wants data.
            self.state = State.DATA
        elif ok:
            self.state = _ANYTIME.get(verb) or _TRANSITIONS.get((self.state, verb), self.state)
        elif verb in (Verb.MAIL, Verb.DATA, Verb.MESSAGE):
            self.state = State.READY
        # A failed EHLO/HELO/RCPT/RSET/NOOP leaves the session where it was.
        if not self._awaiting:
            self._planned = self.state

    def take_trailing_data(self) -> bytes:
        """Bytes received behind the 2xx to STARTTLS; must be empty before the handshake."""
        if not self._tls_boundary:
            raise LocalProtocolError("no STARTTLS boundary to take trailing data from")
        return self._parser.take_unconsumed()

    def implicit_tls_established(self) -> None:
        """The handshake on an implicit-TLS port succeeded, before any SMTP."""
        if self.state is not State.CONNECTED or self._awaiting != deque([Verb.GREETING]):
            raise LocalProtocolError("implicit TLS after the session started")
        if self._parser.has_data:
            # The greeting must come through TLS; bytes before it are not the server's.
            raise RemoteProtocolError("cleartext bytes before the TLS handshake")
        self.tls = True

    def tls_established(self) -> None:
        """The handshake succeeded: the session restarts and needs EHLO (RFC 3207 4.2)."""
        if not self._tls_boundary:
            raise LocalProtocolError("TLS established without an accepted STARTTLS")
        if self._parser.take_unconsumed():
            raise RemoteProtocolError("cleartext bytes behind the 220 to STARTTLS")
        self._tls_boundary = False
        self.tls = True
        self.state = self._planned = State.GREETED
