"""One client connection: the SMTP verbs, their replies, and the refusal log line."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from typing import TYPE_CHECKING, AnyStr, Final, cast

from aiosmtpd.smtp import MISSING, syntax

from .. import observe
from ..dsn_request import RecipientDsn, parse_notify, parse_orcpt, parse_ret
from ..listener_settings import ListenerMode
from ..observe import RejectReason
from .checks import (
    IPAddress,
    address_problem,
    is_trusted,
    mail_param_problem,
    rcpt_param_problem,
    with_enhanced_code,
)
from .client_limits import Admission
from .grammar import POSTMASTER, parse_esmtp_params
from .protocol import END_OF_DATA, ClientGone, CommandLoop

if TYPE_CHECKING:
    from .handler import InboundHandler
    from .listener import ListenerState

__all__ = ["InboundSMTP"]

log = logging.getLogger("relaymail.server")


class InboundSMTP(CommandLoop):
    """aiosmtpd's protocol with the wire-level changes listed in the package docstring."""

    def __init__(
        self,
        handler: InboundHandler,
        listener: ListenerState,
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
        self.listener = listener
        self.policy = handler
        self._offers_auth = bool(handler.users)
        self._greeted = False
        self._registered = False
        self._refusal: str | None = None
        self._counted_client = False
        self._client_ip: IPAddress | None = None
        self._open = False  # counted as an open session (metrics) until connection_lost

    # -- connection lifecycle ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS, with the TLS transport; count once.
        if not self._registered:
            self._registered = True
            self._client_ip = _peer_ip(transport.get_extra_info("peername"))
            self._refusal = self._admission()
            if self._refusal is None:
                self.listener.sessions.add(self)
            self._open = True
            observe.emit(observe.InboundConnection(observe.Direction.OPENED, self.peer_ip()))
        super().connection_made(transport)

    def _admission(self) -> str | None:
        """The 421 for a connection that may not start, None when it may."""
        listener, ip = self.listener, self._client_ip
        if listener.closing:
            self.explain_refusal(RejectReason.SHUTTING_DOWN)
            return "421 4.3.2 Service shutting down"
        if len(listener.sessions) >= listener.settings.max_connections:
            self.explain_refusal(RejectReason.TOO_MANY_CONNECTIONS)
            return "421 4.7.0 Too many connections, try again later"
        if ip is None or is_trusted(listener.settings, ip):
            return None
        admission = listener.limits.connect(ip, self.loop.time())
        if admission is Admission.ADMITTED:
            self._counted_client = True
            return None
        self.explain_refusal(RejectReason.CLIENT_LIMITED, admission.value)
        return _CLIENT_REFUSALS[admission]

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.session_ended(self)
        if self._counted_client and self._client_ip is not None:
            self._counted_client = False
            self.listener.limits.disconnect(self._client_ip, self.loop.time())
        if self._open:  # called twice after a failed TLS handshake
            self._open = False
            observe.emit(observe.InboundConnection(observe.Direction.CLOSED, self.peer_ip()))
        super().connection_lost(error)

    async def refuse_session(self) -> bool:
        if self._refusal is None:
            return False
        self.log_refusal(self._refusal)  # push() logs replies after the greeting only
        await self.push(self._refusal)
        return True

    def shut_down_if_idle(self) -> bool:
        """Say 421 and close if waiting for a command outside a transaction."""
        envelope = self.envelope
        if self.waiting_for_command and envelope is not None and envelope.mail_from is None:
            self.say_goodbye("421 4.3.2 Service shutting down")
            return True
        return False

    def abort(self) -> None:
        # Not isinstance(asyncio.Transport): uvloop's transports do not subclass it, and
        # under `serve` the cut-off after the shutdown grace did nothing.
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()

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

    def peer_ip(self) -> str | None:
        return str(self._client_ip) if self._client_ip is not None else None

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
        self.reset_transaction()
        session = self.inbound_session()
        session.extended_smtp = False
        session.host_name = hostname
        await self._push_verbatim(f"250 {self.hostname}")

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self.reset_transaction()
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
            "DSN",
        ]
        if self.tls_context is not None and not tls_active:
            extensions.append("STARTTLS")
        if tls_active:
            # RFC 8689 3: offered only where it can be used, over TLS.
            extensions.append("REQUIRETLS")
        if self._offers_auth and (tls_active or not self.tls_required_for_auth):
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
        envelope, session = self.inbound_envelope(), self.inbound_session()
        if envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        path = self.parse_path_argument("FROM:", arg)
        params = None if path is None else parse_esmtp_params(path.parameters)
        if path is None or params is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        if params and not session.extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        sender, param_text = path.address, path.parameters
        smtputf8 = "SMTPUTF8" in params
        tls = self.tls_in_use() is not None
        problem = mail_param_problem(params, self.data_size_limit or 0, tls=tls) or (
            address_problem(sender, smtputf8=smtputf8, role="sender") if sender else None
        )
        if problem is not None:
            await self.push(problem)
            return
        envelope.smtp_utf8 = smtputf8
        envelope.requiretls = "REQUIRETLS" in params
        # Checked above; kept as sent (xtext is never re-encoded).
        envelope.ret = parse_ret(params["RET"]) if "RET" in params else None
        envelope.envid = params.get("ENVID")
        options = param_text.split()
        status = await self.call_hook("MAIL", sender, options)
        if status is MISSING:
            envelope.mail_from = sender
            envelope.mail_options.extend(options)
            status = "250 2.1.0 Ok"
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope, session = self.inbound_envelope(), self.inbound_session()
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        path = self.parse_path_argument("TO:", arg)
        params = None if path is None else parse_esmtp_params(path.parameters)
        if path is None or not path.address or params is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        if params and not session.extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        address, param_text = path.address, path.parameters
        problem = rcpt_param_problem(params, smtputf8=envelope.smtp_utf8) or (
            None  # postmaster, or a bare name: the handler qualifies it, then checks
            if address == POSTMASTER or "@" not in address
            else address_problem(address, smtputf8=envelope.smtp_utf8, role="recipient")
        )
        if problem is not None:
            await self.push(problem)
            return
        options = param_text.split()
        known = len(envelope.rcpt_tos)
        status = await self.call_hook("RCPT", address, options)
        if status is MISSING:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            status = "250 2.1.5 Ok"
        if len(envelope.rcpt_tos) > known:
            # Under the address as accepted: the handler may have qualified or replaced it.
            envelope.rcpt_dsn[envelope.rcpt_tos[-1]] = _recipient_dsn(params, envelope.smtp_utf8)
        await self.push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.inbound_envelope()
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not envelope.rcpt_tos:
            # RFC 2920 3.1: a pipelining client learns here that nothing was accepted.
            reply = "554 5.5.1 Error: no valid recipients"
            await self.refuse(RejectReason.NO_VALID_RECIPIENTS, reply)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        intake = self.policy.start_data()
        try:
            try:
                complete = await self.read_message_data(intake.feed)
            except BaseException:
                intake.data.close()
                raise
            if complete:
                # The handler owns the data from here: the queue may still be writing it.
                received = intake.finish()
                status = await self.policy.handle_DATA(self, self.inbound_session(), envelope,
                                                       received)  # fmt: skip
            else:
                intake.data.close()
                status = "552 5.3.4 Message size exceeds fixed maximum message size"
        finally:
            # The transaction is over whatever happened (RFC 5321 4.1.1.4).
            self.reset_transaction()
        self._answering = END_OF_DATA
        await self.push(status)
        if self.listener.closing and self.transport is not None:
            await self.push("421 4.3.2 Service shutting down")
            self.transport.close()


_CLIENT_REFUSALS: Final = {
    Admission.TOO_MANY_CONNECTIONS: "421 4.7.0 Too many connections from your address",
    Admission.CONNECTION_RATE: "421 4.7.0 Too many connections from your address per minute",
    Admission.AUTH_BLOCKED: "421 4.7.0 Too many failed authentication attempts from your address",
}


def _recipient_dsn(params: dict[str, str | None], smtputf8: bool) -> RecipientDsn:
    """NOTIFY and ORCPT of a RCPT whose parameters were checked (rcpt_param_problem)."""
    notify = parse_notify(params["NOTIFY"]) if "NOTIFY" in params else None
    orcpt = parse_orcpt(params["ORCPT"], smtputf8=smtputf8) if "ORCPT" in params else None
    return RecipientDsn(notify, orcpt)


def _peer_ip(peer: object) -> IPAddress | None:
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        return ipaddress.ip_address(str(peer[0]).partition("%")[0])
    except ValueError:
        return None
