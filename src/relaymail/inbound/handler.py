"""The policy of one listener as aiosmtpd handler hooks: MAIL, RCPT, DATA, AUTH."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from aiosmtpd.smtp import MISSING, AuthResult
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from .. import observe
from ..accounts import UserAccount
from ..address_set import AddressSet
from ..errors import QueueFull
from ..listener_settings import ListenerMode, LongLines
from ..message import Envelope, Origin, domain_of, message_id, qualify
from ..message_data import MessageData
from ..observe import RejectReason
from ..passwords import PasswordHash
from ..queue.store import TraceHeader
from .checks import address_problem, is_trusted, may_relay
from .cleanup import missing_fields, received_header, trace_protocol
from .grammar import POSTMASTER
from .intake import Intake, IntakeResult
from .protocol import printable
from .recipient_verification import RecipientVerifier, verdict_reply
from .sender_login import envelope_refusal, header_refusal

if TYPE_CHECKING:
    from ..local import AliasTable
    from .connection import InboundSMTP
    from .listener import ListenerState
    from .protocol import InboundEnvelope, InboundSession

__all__ = ["InboundHandler", "Spool", "Users"]

log = logging.getLogger("relaymail.server")

_T = TypeVar("_T")

Users = Mapping[str, UserAccount]
"""SMTP AUTH users: name -> account (see relaymail.accounts.parse_users)."""


class Spool(Protocol):
    """Where accepted mail goes: the queue's entry point."""

    async def __call__(
        self, envelope: Envelope, data: MessageData, trace: TraceHeader, *,
        arrived: float, origin: Origin,
    ) -> str:  # fmt: skip
        """Store ``trace(queue id) + data`` durably (fsync'd) and return the queue id.

        ``arrived``: when the client began the transaction (MAIL FROM), wall clock.

        ``origin`` says who sent it (DKIM signs only our own users' mail).

        Raises relaymail.errors.QueueFull when the queue cannot take it.
        """
        ...


# Checked for unknown users too, so that a wrong name takes as long as a
# wrong password (no user enumeration by timing).
_NO_SUCH_USER: Final = PasswordHash(log2_n=15, r=8, p=1, salt=bytes(16), digest=bytes(32))


class InboundHandler:
    """The policy of one listener, as aiosmtpd hooks; see the module docstring."""

    def __init__(
        self,
        listener: ListenerState,
        spool: Spool,
        users: Users,
        local: AliasTable | None,
        verifier: RecipientVerifier | None = None,
    ) -> None:
        self.listener = listener
        self.verifier = verifier
        self.settings = listener.settings
        self.spool = spool
        self.users = users
        self.local = local
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
            server.explain_refusal(RejectReason.AUTH_REQUIRED)
            return "530 5.7.0 Authentication required"
        client_ip = server.client_ip()
        if (
            client_ip is not None
            and not is_trusted(self.settings, client_ip)
            and not self.listener.limits.message(client_ip, _now())
        ):
            server.explain_refusal(RejectReason.CLIENT_LIMITED, "message rate")
            return "450 4.7.1 Too many messages from your address, try again later"
        if refusal := self._sender_refusal(session, envelope_refusal, address):
            server.explain_refusal(RejectReason.SENDER_NOT_ALLOWED)
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        session.mail_started = time.time()
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
        if address != POSTMASTER and "@" not in address:
            # A bare name (RFC 5321 allows only Postmaster): qualified with the
            # local domain, as Postfix appends myorigin.
            if self.local is None:
                return "553 5.1.3 Bad recipient address syntax"
            address = qualify(address, self.local.domain)
            if problem := address_problem(address, smtputf8=envelope.smtp_utf8, role="recipient"):
                return problem
        local_part, _, _ = address.rpartition("@")
        if address == POSTMASTER:
            # RFC 5321 4.5.1: accepted from anyone, whatever the relay rules say.
            address = self.settings.postmaster_address
        elif any(c in local_part for c in "%!@") and not (
            authenticated or is_trusted(self.settings, client_ip)
        ):
            # user%elsewhere@relay-domain: routing through us that the next
            # hop may honour; an open relay by the back door (Postfix's
            # allow_untrusted_routing = no).
            server.explain_refusal(RejectReason.RELAY_DENIED, "source routing")
            return "554 5.7.1 Relay access denied"
        elif self.local is not None and self.local.has_alias(address):
            pass  # our aliases are ours to take, as a relay domain is
        elif not may_relay(self.settings, domain_of(address), client_ip, authenticated):
            return "554 5.7.1 Relay access denied"
        elif self.verifier is not None and not (
            authenticated or is_trusted(self.settings, client_ip)
        ):
            # Taken only because it is a relay domain: does the address exist there?
            verdict = await self.verifier.verdict(address)
            if reply := verdict_reply(verdict, address):
                server.explain_refusal(RejectReason.RECIPIENT_UNVERIFIED, str(verdict))
                return reply
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    def start_data(self) -> Intake:
        """Where the next message's data goes while it arrives (see intake.py)."""
        settings = self.settings
        fold = settings.long_lines is LongLines.FOLD
        return Intake(
            MessageData(self.listener.spool_directory),
            fold_at=settings.max_line_length if fold else None,
            unstuff=True,
        )

    async def handle_DATA(
        self,
        server: InboundSMTP,
        session: InboundSession,
        envelope: InboundEnvelope,
        received: IntakeResult,
    ) -> str:
        """The reply to a message received whole; owns ``received.data`` from the call on."""
        assert envelope.mail_from is not None
        data = received.data
        try:  # until the spool takes it, whatever goes wrong closes the data
            refusal = self._refusal(server, received)
            if refusal is None:
                refusal = self._sender_refusal(session, header_refusal, data.head())
                if refusal is not None:
                    server.explain_refusal(RejectReason.SENDER_NOT_ALLOWED)
            if refusal is not None:
                data.close()
                return refusal
            if session.authenticated or self.settings.mode is not ListenerMode.RELAY:
                data.prepend(missing_fields(received.headers, hostname=self.settings.hostname))
            tls = server.tls_in_use()
            trace = functools.partial(
                received_header,
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
            message = Envelope(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                envelope.requiretls,
                envelope.dsn_request(),
            )
            mid, size = message_id(data.head()), data.size  # read before the spool closes the data
            if session.authenticated:
                origin = Origin.AUTHENTICATED
            elif is_trusted(self.settings, server.client_ip()):
                origin = Origin.RELAY_NETWORKS
            else:
                origin = Origin.OUTSIDE
        except BaseException:
            data.close()
            raise
        try:
            queue_id = await self._spool(message, data, trace, session.mail_started, origin)
        except QueueFull:
            server.explain_refusal(RejectReason.QUEUE_UNAVAILABLE, "queue full")
            return "452 4.3.1 Insufficient system storage"
        except Exception:
            log.exception("spool failed for mail from %s", server.client_ip())
            return "451 4.3.0 Queue error, try again later"
        observe.emit(
            observe.Accepted(
                queue_id, str(server.client_ip()), session.host_name,
                str(session.auth_data) if session.authenticated else None, mid,
                message.sender, size, len(message.recipients),
                tls[0] if tls else "clear", received.folded,
            )
        )  # fmt: skip
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _sender_refusal(
        self,
        session: InboundSession,
        judge: Callable[[AddressSet, str, _T], str | None],
        sent: _T,
    ) -> str | None:
        """`judge`'s refusal of what an authenticated user sends as; None when it may."""
        if not session.authenticated or not self.settings.sender_login_binding:
            return None
        user = str(session.auth_data)
        account = self.users.get(user)
        if account is None:  # removed by a reload while the session went on
            return f"553 5.7.1 User {user} may no longer send"
        return judge(account.senders, user, sent)

    def _refusal(self, server: InboundSMTP, received: IntakeResult) -> str | None:
        limit = self.settings.max_line_length
        if received.failure is not None:
            log.error("cannot hold a message being received: %s", received.failure)
            server.explain_refusal(RejectReason.QUEUE_UNAVAILABLE, str(received.failure))
            return "452 4.3.1 Insufficient system storage"
        refuse = self.settings.long_lines is LongLines.REFUSE
        if limit is not None and received.longest > limit and refuse:
            server.explain_refusal(RejectReason.LINE_TOO_LONG)
            return f"500 5.5.2 Line too long, the limit is {limit} octets (RFC 5321 4.5.3.1.6)"
        if received.headers.received >= self.settings.max_received_headers:
            server.explain_refusal(RejectReason.MAIL_LOOP)
            return "554 5.4.6 Too many Received: headers, mail loop detected"
        return None

    async def _spool(
        self, message: Envelope, data: MessageData, trace: TraceHeader, arrived: float,
        origin: Origin,
    ) -> str:  # fmt: skip
        # Shielded: once the queue has started writing, it finishes even if the
        # client goes away (the worst outcome is a duplicate after the client
        # retries, never a half-written entry). close() waits for these. The
        # data is dropped when the write is over, not when the client is.
        task = asyncio.ensure_future(
            self.spool(message, data, trace, arrived=arrived, origin=origin)
        )
        spooling = self.listener.spooling
        spooling.add(task)
        task.add_done_callback(_spool_done(spooling, data))
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
            return await self._failed(
                server, user.decode("utf-8", "replace"), "authorization-identity-differs"
            )
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
        client_ip = server.client_ip()
        if client_ip is not None and self.listener.limits.auth_blocked(client_ip, _now()):
            # Blocked by the failures of another connection: no password is checked.
            log.info("auth failed client=[%s] user=%s reason=blocked", client_ip, _log_token(user))
            return await self._goodbye(server, "blocked")
        account = self.users.get(user)
        known = None if account is None else account.password
        async with self._password_checks:
            valid = await asyncio.to_thread((known or _NO_SUCH_USER).verify, password)
        if known is None:
            return await self._failed(server, user, "unknown-user")
        if not valid:
            return await self._failed(server, user, "bad-password")
        log.info("authenticated %s from %s", user, client_ip)
        return AuthResult(success=True, auth_data=user)

    async def _failed(self, server: InboundSMTP, user: str, reason: str) -> AuthResult:
        """A failed AUTH: a growing wait, then 535; 421 past the session's or client's limit."""
        client_ip = server.client_ip()
        # Stable for fail2ban: failregex = ^auth failed client=\[<HOST>\]
        log.info(
            "auth failed client=[%s] user=%s reason=%s",
            client_ip, _log_token(user), reason,
        )  # fmt: skip
        server.explain_refusal(RejectReason.AUTH_FAILED, f"{reason} for user {_log_token(user)}")
        # relay_networks are exempt: a webmail or proxy there speaks for many users.
        if client_ip is not None and not is_trusted(self.settings, client_ip):
            penalty = self.listener.limits.auth_failed(client_ip, _now())
            if penalty.blocked:
                return await self._goodbye(server, "blocked")
            await asyncio.sleep(penalty.delay)
        session = server.inbound_session()
        session.auth_failures += 1
        if session.auth_failures >= self.settings.max_auth_failures:
            return await self._goodbye(server, "session")
        # aiosmtpd then answers 535 5.7.8.
        return AuthResult(success=False, handled=False)

    @staticmethod
    async def _goodbye(server: InboundSMTP, scope: str) -> AuthResult:
        server.explain_refusal(
            RejectReason.CLIENT_LIMITED if scope == "blocked"
            else RejectReason.TOO_MANY_AUTH_FAILURES, scope,
        )  # fmt: skip
        reply = (
            "421 4.7.0 Too many failed authentication attempts from your address"
            if scope == "blocked"
            else "421 4.7.0 Too many failed authentication attempts"
        )
        await server.push(reply)
        assert server.transport is not None
        server.transport.close()
        return AuthResult(success=False, handled=True)


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


def _now() -> float:
    return asyncio.get_running_loop().time()


def _log_token(text: str) -> str:
    """`text` as one space-free token of a log line ("-" when empty)."""
    return printable(text, 64).replace(" ", "\\x20") or "-"


def _spool_done(spooling: set[asyncio.Task[str]], data: MessageData) -> Any:
    def done(task: asyncio.Task[str]) -> None:
        spooling.discard(task)
        data.close()
        if not task.cancelled():
            # Retrieved here so an error after the client left is not
            # reported as "never retrieved"; handle_DATA logs it otherwise.
            task.exception()

    return done
