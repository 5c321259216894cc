"""The STARTTLS step of one session: observe what the server does, then decide.

Delivery and `relaymail probe` both run `StarttlsStep.run`, so the probe shows
the decision delivery would take at that host, downgrade memory included
(a probe that said "continue in clear" where delivery defers would mislead).
Enacting the decision (use TLS, go on in clear, reconnect, give up) stays with
the caller: only delivery sends mail.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..config import TlsSettings
from ..errors import SessionError
from ..resolver import is_ip
from ..routing import NextHop
from ..smtp.client import Capabilities, Verb
from ..smtp.session import ImplicitTls, SmtpSession
from ..tls.context import CLEAR, TlsFacts, client_context, describe, peer_chain
from ..tls.dane import TlsaLookup
from ..tls.downgrade import TlsLevel
from ..tls.memory import TlsMemory
from ..tls.policy import Action, Decision, Event, Level, decide, memory_counts
from ..tls.results import ResultType
from ..tls.verify import check_peer, failed, openssl_store
from .plan import HostPolicy
from .pool import IdleSession
from .results import AttemptResult


@dataclass(frozen=True, slots=True)
class StarttlsOutcome:
    """What happened at the STARTTLS step and what the policy table makes of it."""

    event: Event
    detail: str  # the server's words or the handshake's error
    tls: TlsFacts
    decision: Decision

    @property
    def result(self) -> AttemptResult:
        """The attempt's result when delivery enacts the decision."""
        return _RESULTS[self.decision.action]


def _level_of(tls: TlsFacts) -> TlsLevel:
    """The level the host showed, whatever the policy makes of it: a certificate the
    policy refuses was still TLS, and the memory holds what the domain can do."""
    if not tls.used:
        return TlsLevel.CLEAR
    return TlsLevel.VERIFIED if tls.verified else TlsLevel.TLS


_RESULTS = {
    Action.USE_TLS: AttemptResult.TLS,
    Action.CONTINUE_CLEAR: AttemptResult.CONTINUED_CLEAR,
    Action.RECONNECT_CLEAR: AttemptResult.TLS_FAILED_RECONNECT_CLEAR,
    Action.HOST_FAILS: AttemptResult.TLS_POLICY_FAILED,
    Action.REQUIRETLS_REFUSED: AttemptResult.REQUIRETLS_REFUSED,
}


class StarttlsStep:
    """Observe -> decide for one session; one instance per delivery engine.

    Delivery enacts the decision (engine.py); `StarttlsOutcome.result` names it.
    """

    def __init__(self, settings: TlsSettings, memory: TlsMemory | None) -> None:
        self._settings = settings
        self._memory = memory
        self._context = client_context()

    async def run(
        self, domain: str, hop: NextHop, session: SmtpSession, caps: Capabilities,
        policy: HostPolicy,
    ) -> StarttlsOutcome:  # fmt: skip
        event, detail, tls = await self._negotiate(domain, hop, session, caps, policy.dane)
        memory = self._memory if self._settings.remembers(domain) else None
        remembered = None
        if memory is not None:
            if memory_counts(policy.level) and not policy.requiretls:  # else: no read
                remembered = await memory.recall_async(domain)
            await memory.saw_async(domain, _level_of(tls))
        decision = decide(
            policy.level, self._settings.tempfail_fallback, event, detail, remembered,
            requiretls=policy.requiretls,
        )  # fmt: skip
        return StarttlsOutcome(event, detail, tls, decision)

    async def kept_below_memory(self, domain: str, policy: HostPolicy, idle: IdleSession) -> bool:
        """Whether a kept session reached less than the downgrade memory holds for `domain`
        now (as `run` would judge it): it must not carry this domain's mail, or mail to a
        domain seen with TLS goes in clear on a session judged before the memory rose, or
        on a neighbour's on the same host. A session the check is cut short for is closed."""
        reached = _level_of(idle.tls)
        if reached is TlsLevel.VERIFIED or not self._settings.remembers(domain):
            return False
        if self._memory is None or not memory_counts(policy.level) or policy.requiretls:
            return False
        try:
            remembered = await self._memory.recall_async(domain)
        except BaseException:
            idle.session.abort()
            raise
        return remembered is not None and remembered.level > reached

    async def _negotiate(
        self,
        domain: str,
        hop: NextHop,
        session: SmtpSession,
        caps: Capabilities,
        dane: TlsaLookup | None,
    ) -> tuple[Event, str, TlsFacts]:
        """Run STARTTLS and the handshake; say what happened, never decide."""
        if "STARTTLS" not in caps:
            return Event.NOT_OFFERED, "", CLEAR
        try:
            reply = await session.command(Verb.STARTTLS)
        except SessionError as exc:
            return Event.NO_REPLY, str(exc), CLEAR
        if reply.is_transient:
            return Event.TEMPFAIL, str(reply), CLEAR
        if not reply.is_success:
            return Event.PERMFAIL, str(reply), CLEAR
        injected = session.conn.take_trailing_data()
        if injected:
            # Delivery's attempt line says so, as a warning, with the queue id (run.py).
            return Event.INJECTION, f"{len(injected)} bytes: {injected[:60]!r}", CLEAR
        reference = hop.name
        try:
            await session.start_tls(self._context, None if is_ip(reference) else reference)
        except SessionError as exc:
            return Event.HANDSHAKE_FAILED, str(exc), CLEAR
        return self._observed(self._tls_facts(session, reference, dane))

    def implicit_tls(self, hop: NextHop) -> ImplicitTls:
        """How to open a session to an smtps:// route: the same context as STARTTLS."""
        return ImplicitTls(self._context, None if is_ip(hop.name) else hop.name)

    def judge_implicit(
        self, hop: NextHop, session: SmtpSession, policy: HostPolicy
    ) -> StarttlsOutcome:
        """Decide on the TLS an implicit-TLS port set up, as the table would after STARTTLS.

        Only the two outcomes with TLS up can happen here: a failed handshake has already
        failed the host, since such a port speaks nothing in clear to fall back to.
        """
        event, detail, tls = self._observed(self._tls_facts(session, hop.name, policy.dane))
        # `none` never asks for TLS, but this port offers nothing else: judge it as `may`.
        level = Level.MAY if policy.level is Level.NONE else policy.level
        decision = decide(
            level, self._settings.tempfail_fallback, event, detail, None,
            requiretls=policy.requiretls,
        )  # fmt: skip
        return StarttlsOutcome(event, detail, tls, decision)

    @staticmethod
    def _observed(tls: TlsFacts) -> tuple[Event, str, TlsFacts]:
        if tls.verified:
            return Event.VERIFIED, f"{tls.version} {tls.cipher}", tls
        return Event.UNVERIFIED, tls.verify_error or "", tls

    def _tls_facts(self, session: SmtpSession, reference: str, dane: TlsaLookup | None) -> TlsFacts:
        """The session's TLS facts; `verified` by the TLSA records when DANE applies."""
        ssl_object = session.ssl_object
        assert ssl_object is not None
        chain = peer_chain(ssl_object)
        if dane is not None:
            verification = dane.verify(chain, now=dt.datetime.now(dt.UTC)).verification
        else:
            try:
                store = openssl_store(self._settings.ca_file)
                verification = check_peer(chain, reference, store)
            except (OSError, ValueError) as exc:
                verification = failed(ResultType.VALIDATION_FAILURE, f"trust store unusable: {exc}")
        cipher = ssl_object.cipher()
        return TlsFacts(
            used=True,
            version=ssl_object.version(),
            cipher=cipher[0] if cipher else None,
            verification=verification,
            certificate=describe(chain[0]) if chain else None,
        )
