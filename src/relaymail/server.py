"""Inbound SMTP: relay control, authentication and limits on top of aiosmtpd.

Theory of operation
-------------------
The work is split the way aiosmtpd intends:

* ``InboundHandler`` is the policy. Its hooks are named after the verb
  (``handle_MAIL``, ``handle_RCPT``, ``handle_DATA``, ``auth_PLAIN``) and return
  the reply: who may relay where, who may authenticate, how many recipients,
  the trace header, loop detection, and the hand-off to the spool.
* ``InboundSMTP`` is the wire: a subclass of aiosmtpd's protocol class that
  keeps aiosmtpd's command loop, STARTTLS and AUTH exchanges, and replaces the
  parts an MTA cannot live with (see LIBRARIES.md, "Inbound: aiosmtpd"):

  - MAIL/RCPT parameters: aiosmtpd answers 555 to every RCPT parameter and to
    RET/ENVID, and upper-cases values (which corrupts ORCPT xtext). Here the
    RFC 3461 parameters and AUTH= are accepted and checked, values kept as
    sent in the aiosmtpd envelope's mail_options/rcpt_options. DSN is not
    advertised: relaymail.message.Envelope has no place for them yet.
  - DATA is read in large pieces (``readuntil(b".\\r\\n")`` over a 64 KiB window)
    instead of line by line; dot-unstuffing is one ``bytes.replace``.
  - Command lines must end in CRLF and hold no other CR (aiosmtpd takes a bare
    LF as a line end); the end of data is only CRLF "." CRLF (aiosmtpd's
    smuggling fix, kept). Bare LF inside message data is normalised to CRLF.
  - Every 2xx/4xx/5xx reply carries an RFC 3463 code, so ENHANCEDSTATUSCODES
    can be advertised honestly; PIPELINING is advertised (aiosmtpd already
    processes pipelined input in order).
  - A connection over ``max_connections`` gets 421 instead of the greeting;
    a second STARTTLS gets 503 instead of a TLS layer inside TLS.

Nothing here delivers mail. ``handle_DATA`` answers 250 only after the spool
callback has returned, i.e. after the queue says the message is durable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import email.utils
import enum
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AnyStr, Final, Protocol

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from .errors import AddressError, ConfigError, QueueFull
from .esmtp import (
    POSTMASTER,
    SmtpPath,
    address_problem,
    mail_param_problem,
    parse_esmtp_params,
    parse_path,
    rcpt_param_problem,
)
from .inbound_loop import ClientGone, CommandLoop, printable
from .long_lines import LongLines, fold_long_lines
from .message import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Envelope,
    canonical_data,
    domain_of,
    header_section,
)
from .passwords import PasswordHash

__all__ = [
    "ListenerHandle",
    "ListenerMode",
    "ListenerSettings",
    "Spool",
    "Users",
    "may_relay",
    "received_header",
    "server_tls_context",
    "start_listener",
]

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Users = Mapping[str, PasswordHash]
"""SMTP AUTH users: name -> scrypt hash (see relaymail.passwords.parse_users)."""


class Spool(Protocol):
    """Where accepted mail goes: the queue's entry point."""

    async def __call__(self, envelope: Envelope, data: bytes) -> str:
        """Store the message durably (fsync'd) and return its queue id.

        Raises relaymail.errors.QueueFull when the queue cannot take it.
        """
        ...


class ListenerMode(enum.StrEnum):
    RELAY = "relay"
    """Port 25: mail for relay_domains from anyone; other domains only for
    clients in relay_networks or authenticated ones. STARTTLS if a certificate
    is configured."""
    SUBMISSION = "submission"
    """Port 587: STARTTLS before anything else, AUTH before MAIL."""
    SMTPS = "smtps"
    """Port 465: submission over implicit TLS (RFC 8314)."""


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One listening socket and the policy applied to its sessions."""

    host: str
    port: int
    mode: ListenerMode = ListenerMode.RELAY
    hostname: str = field(default_factory=socket.getfqdn)
    """Our name in the banner, the EHLO reply and Received: headers."""
    relay_networks: tuple[IPNetwork, ...] = ()
    """Clients that may relay to any domain ("10.0.0.0/8" strings are converted)."""
    relay_domains: tuple[str, ...] = ()
    """Domains anyone may send to. "example.org" matches that domain only,
    ".example.org" any subdomain of it. Normalised to lower-case A-labels."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_auth: bool | None = None
    """None: required in submission and smtps modes, not in relay mode."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Octets of message data as sent (advertised with SIZE)."""
    max_recipients: int = 1000
    max_line_length: int | None = 1000
    """Longest message line in octets including CRLF (RFC 5321 4.5.3.1.6,
    RFC 5322 2.1.1); None leaves lines as they come."""
    long_lines: LongLines = LongLines.FOLD
    """A longer line is folded before the message is queued, or refused."""
    postmaster: str | None = None
    """Where RCPT TO:<postmaster> goes ([local] postmaster); None: postmaster@hostname."""
    max_connections: int = 100
    max_commands_per_verb: int = 10_000
    """How often one connection may use each command verb before 421."""
    max_auth_failures: int = 3
    max_received_headers: int = 50
    """A message that would carry more Received: headers than this once ours
    is added is refused as a loop."""
    idle_timeout: float = 300.0
    """Seconds without a command, or without message data during DATA."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", ListenerMode(self.mode))
        object.__setattr__(self, "long_lines", LongLines(self.long_lines))
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"{self.port} is not a TCP port")
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ConfigError("hostname", f"{self.hostname!r} is not a host name")
        for name in (
            "max_message_size",
            "max_recipients",
            "max_connections",
            "max_commands_per_verb",
            "max_auth_failures",
            "max_received_headers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.max_line_length is not None and self.max_line_length < 80:
            raise ConfigError("max_line_length", "must be at least 80 (or unset)")
        if self.idle_timeout <= 0:
            raise ConfigError("idle_timeout", "must be positive")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file", "tls_cert_file and tls_key_file go together")
        try:
            networks = tuple(ipaddress.ip_network(n) for n in self.relay_networks)
        except ValueError as exc:
            raise ConfigError("relay_networks", str(exc)) from None
        object.__setattr__(self, "relay_networks", networks)
        object.__setattr__(
            self, "relay_domains", tuple(_relay_domain_key(d) for d in self.relay_domains)
        )

    @property
    def postmaster_address(self) -> str:
        return self.postmaster or f"postmaster@{self.hostname}"

    @property
    def auth_required(self) -> bool:
        if self.require_auth is not None:
            return self.require_auth
        return self.mode is not ListenerMode.RELAY


_DOMAIN: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


def _relay_domain_key(entry: str) -> str:
    subdomains = entry.startswith(".")
    try:
        domain = domain_of("postmaster@" + entry.removeprefix("."))
    except AddressError as exc:
        raise ConfigError("relay_domains", f"{entry!r}: {exc}") from None
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        raise ConfigError("relay_domains", f"{entry!r} is not a domain")
    return "." + domain if subdomains else domain


def server_tls_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """The server-side context for a listener's certificate, or None if it has none."""
    if settings.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


# --------------------------------------------------------------------------- policy, pure


def may_relay(
    settings: ListenerSettings,
    domain: str,
    client_ip: IPAddress | None,
    authenticated: bool,
) -> bool:
    """Whether mail for ``domain`` (lookup form, see message.domain_of) may be taken."""
    if authenticated or _is_trusted(settings, client_ip):
        return True
    return any(
        domain.endswith(entry) if entry.startswith(".") else domain == entry
        for entry in settings.relay_domains
    )


def _is_trusted(settings: ListenerSettings, client_ip: IPAddress | None) -> bool:
    if client_ip is None:
        return False
    if isinstance(client_ip, ipaddress.IPv6Address) and client_ip.ipv4_mapped is not None:
        client_ip = client_ip.ipv4_mapped
    return any(client_ip in network for network in settings.relay_networks)


_TRACE_HELO: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,252}|\[[A-Za-z0-9.:]{1,60}\]")


def received_header(
    *,
    helo: str | None,
    client_ip: IPAddress | None,
    hostname: str,
    protocol: str,
    tls: tuple[str, str] | None,
    recipients: Sequence[str],
    date: str | None = None,
) -> bytes:
    """The Received: trace header (RFC 5321 4.4) we prepend, folded, ending in CRLF.

    No "id" clause: the queue id only exists once the spool has stored the
    message, and the header is part of what it stores. The accept log line
    carries the queue id instead. ``tls`` is (protocol version, cipher).
    """
    if client_ip is None:
        literal = "unknown"
    elif client_ip.version == 6:
        literal = f"[IPv6:{client_ip.compressed}]"
    else:
        literal = f"[{client_ip}]"
    # The HELO name is the client's claim; anything that is not plainly a
    # domain or address literal would let it write into our header's syntax.
    claimed = helo if helo and _TRACE_HELO.fullmatch(helo) else "unknown"
    lines = [
        f"Received: from {claimed} ({literal})",
        f"\tby {hostname} (relaymail) with {protocol}",
    ]
    if tls is not None:
        lines.append(f"\t(using {tls[0]} with cipher {tls[1]})")
    when = date or email.utils.formatdate(localtime=True)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {when}")
    else:
        lines[-1] += f"; {when}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def trace_protocol(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The "with" keyword of RFC 3848 / RFC 6531 for a session."""
    if not esmtp:
        return "SMTP"
    return (
        ("UTF8SMTP" if smtputf8 else "ESMTP")
        + ("S" if tls else "")
        + ("A" if authenticated else "")
    )


_RECEIVED_FIELD: Final = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


def count_received(data: bytes) -> int:
    """Received: fields in the header section of canonical message data."""
    return len(_RECEIVED_FIELD.findall(header_section(data)))


def canonical_lines(data: bytes) -> tuple[bytes, int]:
    """``data`` in canonical form (message.canonical_data), and its longest line with CRLF.

    canonical_data rewrites every line ending through a regex: 350 us per
    100 KB here. Mail from conforming clients has nothing to rewrite, and the
    split that measures the lines also proves that (no CR or LF left once
    the CRLFs are gone), at a third of the cost.
    """
    lines = data.split(b"\r\n")
    rest = b"".join(lines)
    if b"\n" in rest or b"\r" in rest or (data and not data.endswith(b"\r\n")):
        data = canonical_data(data)
        lines = data.split(b"\r\n")
    return data, max(map(len, lines)) + 2


# RFC 2034: once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply
# except the greeting and the HELO/EHLO reply carries an RFC 3463 code. Our own
# replies always do; aiosmtpd's mostly don't ("250 OK", "503 Error: need MAIL
# command", "530 Must issue a STARTTLS command first"), so they get the code
# their reply code stands for in this table.
_DEFAULT_ENHANCED: Final[Mapping[str, str]] = {
    "211": "2.0.0",
    "214": "2.0.0",
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
_HAS_ENHANCED: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_enhanced_code(reply: str) -> str:
    """``reply`` with the default RFC 3463 code for its reply code, unless it has one."""
    code, separator, text = reply[:3], reply[3:4], reply[4:]
    default = _DEFAULT_ENHANCED.get(code)
    if default is None or separator not in (" ", "-") or _HAS_ENHANCED.match(text):
        return reply
    return f"{code}{separator}{default} {text}".rstrip()


# --------------------------------------------------------------------------- sessions


class InboundSession(Session):
    """aiosmtpd's session plus what the policy counts per connection."""

    # aiosmtpd assigns Session.login_data after every successful AUTH, and its
    # property logs a deprecation warning each time; a plain attribute is quiet.
    login_data: Any = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.auth_failures = 0


@dataclass(eq=False)
class _ListenerState:
    """What the sessions of one listener share."""

    settings: ListenerSettings
    sessions: set[InboundSMTP] = field(default_factory=set)
    spooling: set[asyncio.Task[str]] = field(default_factory=set)
    closing: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def session_ended(self, session: InboundSMTP) -> None:
        self.sessions.discard(session)
        if self.closing and not self.sessions:
            self.drained.set()


# RFC 5321 4.5.3.1.4 gives 512 octets, and each extension adds its share:
# SIZE 26 (RFC 1870), SMTPUTF8 10 (RFC 6531), RET+ENVID 110 (RFC 3461),
# BODY 15 (RFC 6152), AUTH= 500 (RFC 4954); NOTIFY+ORCPT add 500 to RCPT.
_COMMAND_SIZE_LIMITS: Final[Mapping[str, int]] = {
    "MAIL": 512 + 26 + 10 + 110 + 15 + 500,
    "RCPT": 1012,
}


class InboundSMTP(CommandLoop):
    """aiosmtpd's protocol with the wire-level changes listed in the module docstring."""

    def __init__(
        self,
        handler: InboundHandler,
        listener: _ListenerState,
        tls_context: ssl.SSLContext | None,
        *,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        settings = listener.settings
        implicit_tls = settings.mode is ListenerMode.SMTPS
        super().__init__(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident="ESMTP relaymail",
            tls_context=None if implicit_tls else tls_context,
            require_starttls=settings.mode is ListenerMode.SUBMISSION,
            timeout=settings.idle_timeout,
            # handle_MAIL enforces authentication; aiosmtpd's own switch would
            # also warn on every connection of an implicit-TLS listener.
            auth_required=False,
            # On an implicit-TLS listener the whole connection is encrypted,
            # but aiosmtpd only knows about TLS it started itself.
            auth_require_tls=not implicit_tls,
            auth_exclude_mechanism=() if handler.users else ("PLAIN", "LOGIN"),
            command_call_limit=settings.max_commands_per_verb,
            loop=loop,
        )
        # aiosmtpd keeps these limits in a class-level dict that every EHLO
        # enlarges; ours are fixed and per instance.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, _COMMAND_SIZE_LIMITS
        )
        self.listener = listener
        self._offers_auth = bool(handler.users)
        self._greeted = False
        self._registered = False
        self._over_capacity = False
        self._client_ip: IPAddress | None = None
        self._refusal_detail: str | None = None

    # -- connection lifecycle ------------------------------------------------

    def _create_session(self) -> InboundSession:
        return InboundSession(self.loop)

    def inbound_session(self) -> InboundSession:
        # A method, not a property: aiosmtpd runs inspect.getmembers() on us
        # before there is a session.
        assert isinstance(self.session, InboundSession)
        return self.session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS, with the TLS transport; count once.
        if not self._registered:
            self._registered = True
            sessions = self.listener.sessions
            self._over_capacity = (
                self.listener.closing or len(sessions) >= self.listener.settings.max_connections
            )
            if not self._over_capacity:
                sessions.add(self)
            self._client_ip = _peer_ip(transport.get_extra_info("peername"))
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.session_ended(self)
        super().connection_lost(error)

    async def refuse_session(self) -> bool:
        if not self._over_capacity:
            return False
        reply = (
            "421 4.3.2 Service shutting down"
            if self.listener.closing
            else "421 4.7.0 Too many connections, try again later"
        )
        self.log_refusal(reply)  # push() logs replies after the greeting only
        await self.push(reply)
        return True

    def shut_down_if_idle(self) -> bool:
        """Say 421 and close if waiting for a command outside a transaction."""
        envelope = self.envelope
        if self.waiting_for_command and envelope is not None and envelope.mail_from is None:
            self.say_goodbye("421 4.3.2 Service shutting down")
            return True
        return False

    def say_goodbye(self, reply: str) -> None:
        """Send ``reply`` and close, from outside the session's own task."""
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(reply.encode("ascii") + b"\r\n")
            self.transport.close()

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()

    def tls_in_use(self) -> tuple[str, str] | None:
        """(TLS version, cipher) of this connection, None in cleartext."""
        if self.transport is None:
            return None
        tls = self.transport.get_extra_info("ssl_object")
        if not isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
            return None
        cipher = tls.cipher()
        return (tls.version() or "TLS", cipher[0] if cipher else "unknown")

    def client_ip(self) -> IPAddress | None:
        return self._client_ip

    # -- replies -------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and self._greeted:
            status = with_enhanced_code(status)
            if status[:1] in ("4", "5"):
                # The one place every refusal passes: one line each, with the
                # client, the command and the reply (Postfix's "reject:" line).
                self.log_refusal(status)
        await super().push(status)
        self._greeted = True

    def log_refusal(self, outcome: str) -> None:
        detail, self._refusal_detail = self._refusal_detail, None
        log.info(
            "refused client=%s command=%s reply=%s%s",
            self._client_ip,
            printable(self.current_command),
            printable(outcome),
            f" ({detail})" if detail else "",
        )

    def explain_refusal(self, detail: str) -> None:
        """What the log line of the next refusal adds to its reply (never sent to the client)."""
        self._refusal_detail = detail

    async def _push_verbatim(self, line: str) -> None:
        await super().push(line)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd would tell the client the exception's class and message.
        log.error(
            "error in SMTP session with %r", self.session and self.session.peer, exc_info=error
        )
        return "451 4.3.0 Internal error, try again later"

    # -- commands ------------------------------------------------------------

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self.envelope = self._create_envelope()
        session = self.inbound_session()
        session.extended_smtp = False
        session.host_name = hostname
        await self._push_verbatim(f"250 {self.hostname}")

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self.envelope = self._create_envelope()
        session = self.inbound_session()
        session.extended_smtp = True
        session.host_name = hostname
        tls_active = self.tls_in_use() is not None
        extensions = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.data_size_limit}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if self.tls_context is not None and not tls_active:
            extensions.append("STARTTLS")
        if self._offers_auth and (tls_active or not self._auth_require_tls):
            extensions.append("AUTH PLAIN LOGIN")
        reply = [f"250-{line}" for line in extensions[:-1]] + [f"250 {extensions[-1]}"]
        await self._push_verbatim("\r\n".join(reply))

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        # aiosmtpd would start a second TLS layer inside the first.
        if self.tls_in_use() is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        if self.client_closed:
            # No ClientHello can follow a half-close; the handshake would wait
            # for one until its timeout.
            raise ClientGone
        await super().smtp_STARTTLS(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        # RFC 5321 3.5.3: 252 when not verifying. Nothing is looked up, so the
        # argument is not parsed, and never echoed (it may not even be UTF-8).
        if not arg:
            await self.push("501 5.5.4 Syntax: VRFY <address>")
            return
        await self.push("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if self.listener.closing:
            await self.push("421 4.3.2 Service shutting down")
            assert self.transport is not None
            self.transport.close()
            return
        envelope, session = self.envelope, self.inbound_session()
        assert envelope is not None
        if envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        path = self._parse_path("FROM:", arg)
        params = None if path is None else parse_esmtp_params(path.parameters)
        if path is None or params is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        if params and not session.extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        sender, param_text = path.address, path.parameters
        smtputf8 = "SMTPUTF8" in params
        problem = mail_param_problem(params, self.data_size_limit or 0) or (
            address_problem(sender, smtputf8=smtputf8, role="sender") if sender else None
        )
        if problem is not None:
            await self.push(problem)
            return
        envelope.smtp_utf8 = smtputf8
        options = param_text.split()
        status = await self._call_handler_hook("MAIL", sender, options)
        if status is MISSING:
            envelope.mail_from = sender
            envelope.mail_options.extend(options)
            status = "250 2.1.0 Ok"
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope, session = self.envelope, self.inbound_session()
        assert envelope is not None
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        path = self._parse_path("TO:", arg)
        params = None if path is None else parse_esmtp_params(path.parameters)
        if path is None or not path.address or params is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        if params and not session.extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        address, param_text = path.address, path.parameters
        problem = rcpt_param_problem(params) or (
            None
            if address == POSTMASTER
            else address_problem(address, smtputf8=envelope.smtp_utf8, role="recipient")
        )
        if problem is not None:
            await self.push(problem)
            return
        options = param_text.split()
        status = await self._call_handler_hook("RCPT", address, options)
        if status is MISSING:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            status = "250 2.1.5 Ok"
        await self.push(status)

    def _parse_path(self, keyword: str, arg: str | None) -> SmtpPath | None:
        """The path and parameters of "FROM:<path> params"; None if malformed."""
        rest = self._strip_command_keyword(keyword, arg or "")
        return parse_path(rest) if rest else None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert envelope is not None
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not envelope.rcpt_tos:
            # RFC 2920 3.1: a pipelining client learns here that nothing was accepted.
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await self._read_message_data()
            if content is None:
                status: str = "552 5.3.4 Message size exceeds fixed maximum message size"
            else:
                envelope.content = envelope.original_content = content
                status = await self._call_handler_hook("DATA")
        finally:
            # The transaction is over whatever happened (RFC 5321 4.1.1.4).
            self.envelope = self._create_envelope()
        await self.push(status)
        if self.listener.closing and self.transport is not None:
            await self.push("421 4.3.2 Service shutting down")
            self.transport.close()

    async def _read_message_data(self) -> bytes | None:
        """The message up to CRLF "." CRLF, un-dot-stuffed; None if over the size limit.

        Reads pieces ending in ".\\r\\n" (or 64 KiB of data without one), so a
        typical message takes a few reads instead of one per line. A piece
        ends the message when the five octets before its end are CRLF "."
        CRLF; the DATA command's own CRLF counts as the start, so an empty
        message (a lone "." line) works. Over the size limit the rest is read
        and dropped, then refused (RFC 5321 4.2.5: reply after the data).
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        pieces: list[bytes] = []
        size = 0
        tail = b"\r\n"
        while True:
            try:
                piece = await reader.readuntil(b".\r\n")
                ends_data = (tail + piece[-5:])[-5:] == b"\r\n.\r\n"
            except asyncio.IncompleteReadError:
                raise ClientGone from None  # the message is not complete: not ours yet
            except asyncio.LimitOverrunError as exc:
                piece = await reader.read(exc.consumed)
                ends_data = False
            self._reset_timeout()
            if ends_data:
                piece = piece[:-3]
            size += len(piece)
            if size <= limit:
                pieces.append(piece)
            else:
                pieces.clear()
            if ends_data:
                break
            tail = (tail + piece[-4:])[-4:]
        if size > limit:
            return None
        data = b"".join(pieces)
        # RFC 5321 4.5.2: drop the first "." of every line that starts with one.
        data = data.replace(b"\r\n.", b"\r\n")
        return data[1:] if data.startswith(b".") else data


def _peer_ip(peer: object) -> IPAddress | None:
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        return ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None


# --------------------------------------------------------------------------- policy hooks

# Checked for unknown users too, so that a wrong name takes as long as a
# wrong password (no user enumeration by timing).
_NO_SUCH_USER: Final = PasswordHash(log2_n=15, r=8, p=1, salt=bytes(16), digest=bytes(32))


class InboundHandler:
    """The policy of one listener, as aiosmtpd hooks; see the module docstring."""

    def __init__(self, listener: _ListenerState, spool: Spool, users: Users) -> None:
        self.listener = listener
        self.settings = listener.settings
        self.spool = spool
        self.users = users
        # scrypt takes 32 MiB and tens of milliseconds per check; bound how
        # many run at once so a burst of AUTHs cannot take the machine.
        self._password_checks = asyncio.Semaphore(2)

    async def handle_MAIL(
        self,
        server: InboundSMTP,
        session: InboundSession,
        envelope: SMTPEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.settings.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: InboundSMTP,
        session: InboundSession,
        envelope: SMTPEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        client_ip = server.client_ip()
        authenticated = bool(session.authenticated)
        local_part, _, _ = address.rpartition("@")
        if address == POSTMASTER:
            # RFC 5321 4.5.1: accepted from anyone, whatever the relay rules say.
            address = self.settings.postmaster_address
        elif any(c in local_part for c in "%!@") and not (
            authenticated or _is_trusted(self.settings, client_ip)
        ):
            # user%elsewhere@relay-domain: routing through us that the next
            # hop may honour; an open relay by the back door (Postfix's
            # allow_untrusted_routing = no).
            server.explain_refusal("source routing")
            return "554 5.7.1 Relay access denied"
        elif not may_relay(self.settings, domain_of(address), client_ip, authenticated):
            return "554 5.7.1 Relay access denied"
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(
        self, server: InboundSMTP, session: InboundSession, envelope: SMTPEnvelope
    ) -> str:
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        data, longest = canonical_lines(envelope.content)
        limit = self.settings.max_line_length
        folded = 0
        if limit is not None and longest > limit:
            if self.settings.long_lines is LongLines.REFUSE:
                return f"500 5.5.2 Line too long, the limit is {limit} octets (RFC 5321 4.5.3.1.6)"
            fold = fold_long_lines(data, limit)
            data, folded = fold.data, fold.lines
        if count_received(data) >= self.settings.max_received_headers:
            return "554 5.4.6 Too many Received: headers, mail loop detected"
        tls = server.tls_in_use()
        trace = received_header(
            helo=session.host_name,
            client_ip=server.client_ip(),
            hostname=self.settings.hostname,
            protocol=trace_protocol(
                esmtp=session.extended_smtp,
                tls=tls is not None,
                authenticated=bool(session.authenticated),
                smtputf8=envelope.smtp_utf8,
            ),
            tls=tls,
            recipients=envelope.rcpt_tos,
        )
        message = Envelope(sender=envelope.mail_from, recipients=tuple(envelope.rcpt_tos))
        try:
            queue_id = await self._spool(message, trace + data)
        except QueueFull:
            server.explain_refusal("queue full")
            return "452 4.3.1 Insufficient system storage"
        except Exception:
            log.exception("spool failed for mail from %s", server.client_ip())
            return "451 4.3.0 Queue error, try again later"
        log.info(
            "accepted %s from=<%s> nrcpt=%d size=%d client=%s auth=%s%s",
            queue_id,
            message.sender,
            len(message.recipients),
            len(data),
            server.client_ip(),
            session.auth_data if session.authenticated else "-",
            f" folded={folded} lines over {limit} octets" if folded else "",
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _spool(self, message: Envelope, data: bytes) -> str:
        # Shielded: once the queue has started writing, it finishes even if the
        # client goes away (the worst outcome is a duplicate after the client
        # retries, never a half-written entry). close() waits for these.
        task = asyncio.ensure_future(self.spool(message, data))
        spooling = self.listener.spooling
        spooling.add(task)
        task.add_done_callback(_spool_done(spooling))
        return await asyncio.shield(task)

    # -- AUTH (RFC 4954); aiosmtpd calls these instead of its own ----------

    async def auth_PLAIN(self, server: InboundSMTP, args: list[str]) -> AuthResult:
        response = await _sasl_response(server, args, "")
        if response is None:
            return AuthResult(success=False, handled=True)
        fields = response.split(b"\0")
        if len(fields) != 3:
            await server.push("501 5.5.2 AUTH PLAIN takes authzid NUL user NUL password")
            return AuthResult(success=False, handled=True)
        authzid, user, password = fields
        if authzid and authzid != user:
            # Acting for another user is not something we grant.
            return await self._failed(server, "authorization identity differs from user")
        return await self._check_password(server, user, password)

    async def auth_LOGIN(self, server: InboundSMTP, args: list[str]) -> AuthResult:
        user = await _sasl_response(server, args, "Username:")
        if user is None:
            return AuthResult(success=False, handled=True)
        password = await _sasl_response(server, args[:1], "Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check_password(server, user, password)

    async def _check_password(
        self, server: InboundSMTP, user_bytes: bytes, password: bytes
    ) -> AuthResult:
        try:
            user = user_bytes.decode("utf-8")
        except UnicodeDecodeError:
            user = ""
        known = self.users.get(user)
        async with self._password_checks:
            valid = await asyncio.to_thread((known or _NO_SUCH_USER).verify, password)
        if known is None or not valid:
            return await self._failed(server, f"bad credentials for user {user!r}")
        log.info("authenticated %s from %s", user, server.client_ip())
        return AuthResult(success=True, auth_data=user)

    async def _failed(self, server: InboundSMTP, reason: str) -> AuthResult:
        session = server.inbound_session()
        session.auth_failures += 1
        server.explain_refusal(reason)
        if session.auth_failures >= self.settings.max_auth_failures:
            await server.push("421 4.7.0 Too many failed authentication attempts")
            assert server.transport is not None
            server.transport.close()
            return AuthResult(success=False, handled=True)
        # aiosmtpd then answers 535 5.7.8.
        return AuthResult(success=False, handled=False)


async def _sasl_response(server: InboundSMTP, args: list[str], challenge: str) -> bytes | None:
    """The client's answer: the initial response after the mechanism, else a 334 round.

    None when the client cancelled or sent bad base64 (already answered).
    """
    if len(args) == 1:
        answer = await server.challenge_auth(challenge)
        return None if answer is MISSING else answer
    if args[1] == "=":  # RFC 4954 4: an empty initial response
        return b""
    try:
        return base64.b64decode(args[1], validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Cannot decode base64")
        return None


def _spool_done(spooling: set[asyncio.Task[str]]) -> Any:
    def done(task: asyncio.Task[str]) -> None:
        spooling.discard(task)
        if not task.cancelled():
            # Retrieved here so an error after the client left is not
            # reported as "never retrieved"; handle_DATA logs it otherwise.
            task.exception()

    return done


# --------------------------------------------------------------------------- start / stop


class ListenerHandle:
    """A running listener: its bound addresses and a way to stop it."""

    def __init__(self, server: asyncio.Server, listener: _ListenerState) -> None:
        self._server = server
        self._listener = listener

    @property
    def settings(self) -> ListenerSettings:
        return self._listener.settings

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The (host, port) pairs actually bound (port 0 in the settings picks one)."""
        return tuple(
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for sock in self._server.sockets
        )

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def active_sessions(self) -> int:
        return len(self._listener.sessions)

    async def close(self, grace: float = 30.0) -> None:
        """Stop accepting; let transactions in progress finish for up to ``grace`` seconds.

        Sessions waiting for a command outside a transaction get "421 4.3.2"
        at once; the others get it after their current message (or when they
        start a new one). Whatever is left after ``grace`` is cut off; that
        loses no mail, because nothing was acknowledged before it was spooled.
        Returns once messages being spooled are in the queue.
        """
        listener = self._listener
        listener.closing = True
        self._server.close()
        for session in list(listener.sessions):
            session.shut_down_if_idle()
        if listener.sessions:
            try:
                await asyncio.wait_for(listener.drained.wait(), grace)
            except TimeoutError:
                for session in list(listener.sessions):
                    session.say_goodbye("421 4.3.2 Service shutting down")
                await asyncio.sleep(0.1)
                for session in list(listener.sessions):
                    session.abort()
        await self._server.wait_closed()
        if listener.spooling:
            await asyncio.wait(set(listener.spooling))


async def start_listener(
    settings: ListenerSettings,
    spool: Spool,
    users: Users,
    tls_context: ssl.SSLContext | None,
) -> ListenerHandle:
    """Listen on ``settings.host``/``settings.port`` on the running event loop."""
    if settings.mode is not ListenerMode.RELAY and tls_context is None:
        raise ConfigError("tls_cert_file", f"a {settings.mode} listener needs a certificate")
    if settings.auth_required and not users:
        raise ConfigError("users", "authentication is required but no users are configured")
    loop = asyncio.get_running_loop()
    listener = _ListenerState(settings)
    handler = InboundHandler(listener, spool, users)

    def new_session() -> InboundSMTP:
        return InboundSMTP(handler, listener, tls_context, loop=loop)

    server = await loop.create_server(
        new_session,
        host=settings.host,
        port=settings.port,
        ssl=tls_context if settings.mode is ListenerMode.SMTPS else None,
        reuse_address=True,
    )
    handle = ListenerHandle(server, listener)
    log.info("listening on %s (%s)", handle.addresses, settings.mode)
    if settings.postmaster is None:
        log.warning(
            "no [local] postmaster configured: mail to <postmaster> is queued for %s",
            settings.postmaster_address,
        )
    return handle
