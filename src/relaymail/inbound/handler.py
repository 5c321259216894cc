"""The policy of one listener as aiosmtpd handler hooks: MAIL, RCPT, DATA, AUTH."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiosmtpd.smtp import MISSING, AuthResult
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from ..errors import QueueFull
from ..listener_settings import ListenerMode, LongLines
from ..message import Envelope, Origin, domain_of, qualify
from ..passwords import PasswordHash
from ..queue.store import TraceHeader
from .checks import address_problem, is_trusted, may_relay
from .cleanup import (
    canonical_lines,
    count_received,
    fix_up_headers,
    fold_long_lines,
    received_header,
    trace_protocol,
)
from .grammar import POSTMASTER

if TYPE_CHECKING:
    from ..local import AliasTable
    from .connection import InboundSMTP
    from .listener import ListenerState
    from .protocol import InboundSession

__all__ = ["InboundHandler", "Spool", "Users"]

log = logging.getLogger("relaymail.server")

Users = Mapping[str, PasswordHash]
"""SMTP AUTH users: name -> scrypt hash (see relaymail.passwords.parse_users)."""


class Spool(Protocol):
    """Where accepted mail goes: the queue's entry point."""

    async def __call__(
        self, envelope: Envelope, data: bytes, trace: TraceHeader, *, origin: Origin
    ) -> str:
        """Store ``trace(queue id) + data`` durably (fsync'd) and return the queue id.

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
        self, listener: ListenerState, spool: Spool, users: Users, local: AliasTable | None
    ) -> None:
        self.listener = listener
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
            server.explain_refusal("source routing")
            return "554 5.7.1 Relay access denied"
        elif not (
            # Our aliases are ours to take, as a relay domain is.
            (self.local is not None and self.local.has_alias(address))
            or may_relay(self.settings, domain_of(address), client_ip, authenticated)
        ):
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
        if session.authenticated or self.settings.mode is not ListenerMode.RELAY:
            data = fix_up_headers(data, hostname=self.settings.hostname)
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
        message = Envelope(sender=envelope.mail_from, recipients=tuple(envelope.rcpt_tos))
        if session.authenticated:
            origin = Origin.AUTHENTICATED
        elif is_trusted(self.settings, server.client_ip()):
            origin = Origin.RELAY_NETWORKS
        else:
            origin = Origin.OUTSIDE
        try:
            queue_id = await self._spool(message, data, trace, origin)
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

    async def _spool(
        self, message: Envelope, data: bytes, trace: TraceHeader, origin: Origin
    ) -> str:
        # Shielded: once the queue has started writing, it finishes even if the
        # client goes away (the worst outcome is a duplicate after the client
        # retries, never a half-written entry). close() waits for these.
        task = asyncio.ensure_future(self.spool(message, data, trace, origin=origin))
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
