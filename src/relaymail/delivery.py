"""One delivery: a message to its recipients, host by host, the TLS policy applied.

For each recipient domain: resolve the next hops, try them in order, and for
each session apply the policy table (tls/policy.py) at the STARTTLS step.
Every step that matters becomes an Attempt, so each result can say why it went
the way it did. Sessions that end cleanly are kept for the next message to the
same host (Postfix's connection cache): with pipelining, that is what makes
delivery cheap.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import sqlite3
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .errors import RelaymailError
from .message import Envelope, domain_of, dot_stuff, header_section
from .mime7bit import ConversionImpossible, to_7bit
from .routing import HopSource, NextHop, Router, RoutingError, make_resolver
from .smtp.client import Capabilities, State, Verb
from .smtp.reply import Reply
from .smtp.session import SessionError, SmtpSession
from .starttls import HostPolicy, StarttlsStep
from .tls.context import CLEAR, TlsFacts
from .tls.dane import DaneStatus, TlsaLookup, lookup_tlsa
from .tls.memory import TlsMemory
from .tls.mta_sts import StsCache, StsMode, StsPolicy, StsResolver, https_context
from .tls.policy import (
    DEFAULT_SOURCE,
    Action,
    Decision,
    Event,
    Level,
    wants_starttls,
)
from .tls.tlsrpt import PolicyType, ResultType, TlsEvent, TlsReportStore, session_event

log = logging.getLogger("relaymail.delivery")


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One step of a delivery that a person may want to see."""

    host: str
    ip: str
    result: str
    tls: bool
    detail: str


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: str
    status: Status
    reason: str
    host: str | None = None
    reply: str | None = None
    tls: TlsFacts = CLEAR
    attempts: tuple[Attempt, ...] = ()
    enhanced_status: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "host": self.host,
            "reply": self.reply,
            "tls": {
                "used": self.tls.used,
                "version": self.tls.version,
                "cipher": self.tls.cipher,
                "verified": self.tls.verified,
            },
            "reason": self.reason,
            "attempts": [
                {"host": a.host, "ip": a.ip, "result": a.result, "tls": a.tls, "detail": a.detail}
                for a in self.attempts
            ],
        }


@dataclass(slots=True)
class _Outcome:
    """A recipient's standing within one domain's delivery."""

    status: Status = Status.DEFERRED
    reason: str = "no host was tried"
    host: str | None = None
    reply: Reply | None = None
    tls: TlsFacts = CLEAR
    enhanced: str | None = None  # RFC 3463 status when no reply gives one


@dataclass(frozen=True, slots=True)
class DomainPlan:
    """What decides a domain's TLS: its level and why, MTA-STS, and each host's policy."""

    level: Level
    source: str
    sts: StsPolicy | None
    hosts: tuple[tuple[NextHop, HostPolicy | str], ...]  # str: why the host is unusable


@dataclass(slots=True)
class _DomainRun:
    """Mutable state of one domain's delivery: who is still pending, what happened."""

    domain: str
    level: Level
    level_source: str
    sender: str
    data: bytes
    stuffed: bytes
    needs_smtputf8: bool
    outcomes: dict[str, _Outcome]
    attempts: list[Attempt] = field(default_factory=list)
    sts: StsPolicy | None = None  # an MTA-STS policy in enforce or testing mode
    events: list[TlsEvent] = field(default_factory=list)  # for TLS reporting
    published: bool = False  # the domain's DNS-published policies (DANE, MTA-STS) apply
    host: HostPolicy = field(default_factory=lambda: HostPolicy(Level.MAY, ""))
    seven_bit: dict[bool, tuple[bytes, bytes]] = field(default_factory=dict)  # converted, stuffed

    def data_for(self, caps: Capabilities) -> tuple[bytes, bytes]:
        """(data, dot-stuffed data) as this next hop may take it: 7-bit without 8BITMIME.

        RFC 6152 3: 8-bit data never goes to a server that did not offer 8BITMIME.
        Raises ConversionImpossible when no 7-bit form says the same.
        """
        if "8BITMIME" in caps or self.data.isascii():
            return self.data, self.stuffed
        utf8_headers = "SMTPUTF8" in caps
        if utf8_headers not in self.seven_bit:
            converted = to_7bit(self.data, utf8_headers=utf8_headers)
            self.seven_bit[utf8_headers] = (converted, dot_stuff(converted))
        return self.seven_bit[utf8_headers]

    @property
    def pending(self) -> list[str]:
        return [r for r, o in self.outcomes.items() if o.status is Status.DEFERRED]

    def settle(self, recipients: Iterable[str], status: Status, reason: str, **facts: Any) -> None:
        for rcpt in recipients:
            self.outcomes[rcpt] = _Outcome(status, reason, **facts)

    def note(self, hop: NextHop, ip: str, result: str, tls: TlsFacts, detail: str) -> None:
        self.attempts.append(Attempt(hop.label, ip, result, tls.used, detail))
        tls_words = (
            f"{tls.version}/{tls.cipher}/{'verified' if tls.verified else 'unverified'}"
            if tls.used
            else "none"
        )
        log.log(
            _LOG_LEVELS.get(result, logging.INFO),
            "domain=%s host=%s ip=%s tls=%s result=%s policy=%s (%s): %s",
            self.domain, hop.label, ip, tls_words, result,
            self.host.level.value, self.host.source, detail,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class HostInspection:
    """What `inspect_host` saw at one server address."""

    hop: NextHop
    ip: str
    greeting: str | None = None
    capabilities: Capabilities | None = None
    capabilities_after_tls: Capabilities | None = None
    event: Event | None = None
    tls: TlsFacts = CLEAR
    level: Level | None = None
    level_source: str | None = None  # e.g. the TLSA records when DANE decides the host
    decision: Decision | None = None
    error: str | None = None


class _HostFailed(Exception):
    """This host cannot take the pending recipients; the reason goes to the next one."""

    def __init__(self, result: str, detail: str, tls: TlsFacts = CLEAR) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail
        self.tls = tls  # TLS can be up when the host fails (a certificate `verify` refuses)


def _unforeseen(exc: Exception) -> _HostFailed:
    """An exception no step expected, as a failed host whose detail says where it came from."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return _HostFailed(_INTERNAL_ERROR, f"internal error{where}: {type(exc).__name__}: {exc}")


_INTERNAL_ERROR = "internal-error"
# A delivery is logged once, by whoever queued it (the scheduler's "delivered" line);
# an internal error is a defect to fix, so it stands out.
_LOG_LEVELS = {"delivered": logging.DEBUG, _INTERNAL_ERROR: logging.ERROR}


@dataclass(slots=True)
class _Cached:
    session: SmtpSession
    caps: Capabilities
    tls: TlsFacts
    expires: asyncio.TimerHandle | None = None


class DeliveryEngine:
    """Delivers messages; one engine per process so sessions and DNS answers are shared."""

    def __init__(self, config: Config, router: Router | None = None) -> None:
        self.config = config
        # One resolver for routing, MTA-STS and DANE, so they see the same DNS.
        self.resolver = make_resolver(config.dns)
        self.router = router or Router(
            config.routes, self.resolver, config.delivery.port,
            system_lookup=not config.dns.nameservers,
            max_mx_addresses=config.delivery.max_mx_addresses,
        )  # fmt: skip
        self._sts: StsResolver | None = None
        self._sts_cache: StsCache | None = None
        self._reports: TlsReportStore | None = None
        self._tlsa_cache: dict[tuple[str, int], tuple[float, TlsaLookup]] = {}
        self._memory = (
            TlsMemory(config.queue.directory, config.tls.remember_for)
            if config.tls.remember
            else None
        )
        self._starttls = StarttlsStep(config.tls, self._memory)
        self._idle: dict[tuple[str, int, str, Level], list[_Cached]] = defaultdict(list)
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def deliver(self, envelope: Envelope, data: bytes) -> list[RecipientResult]:
        """Deliver canonical message data (CRLF, not dot-stuffed); one result per recipient."""
        by_domain: dict[str, list[str]] = defaultdict(list)
        for rcpt in envelope.recipients:
            by_domain[domain_of(rcpt)].append(rcpt)
        stuffed = dot_stuff(data)
        runs = await asyncio.gather(
            *(
                self._deliver_domain(d, rcpts, envelope, data, stuffed)
                for d, rcpts in by_domain.items()
            )
        )
        results = {r.recipient: r for run in runs for r in run}
        return [results[rcpt] for rcpt in envelope.recipients]

    async def close(self) -> None:
        """QUIT every idle session; release the policy caches and report counters."""
        if self._memory is not None:
            self._memory.close()
        if self._sts is not None:
            await self._sts.close()
        for store in (self._sts_cache, self._reports):
            if store is not None:
                store.close()
        idle = [c for entries in self._idle.values() for c in entries]
        self._idle.clear()
        for cached in idle:
            if cached.expires is not None:
                cached.expires.cancel()
        await asyncio.gather(*(c.session.quit() for c in idle))

    async def _deliver_domain(
        self, domain: str, rcpts: list[str], envelope: Envelope, data: bytes, stuffed: bytes
    ) -> list[RecipientResult]:
        level, source = self.config.tls.policy.level_for(domain)
        run = _DomainRun(
            domain, level, source, envelope.sender, data, stuffed,
            envelope.needs_smtputf8, {r: _Outcome() for r in rcpts},
        )  # fmt: skip
        # RFC 8689 TLS-Required: No (TLS reports carry it): the domain's published
        # policies do not apply, and the session is not counted in its reports.
        relaxed = tls_not_required(data)
        slot = self._slots.setdefault(
            domain, asyncio.Semaphore(self.config.delivery.destination_concurrency)
        )
        async with slot:
            try:
                hops = await self.router.next_hops(domain)
            except RoutingError as exc:
                status = Status.BOUNCED if exc.permanent else Status.DEFERRED
                run.settle(rcpts, status, exc.reason)
                return _results(run, {r: exc.status for r in rcpts})
            await self._apply_published_policies(run, hops, relaxed)
            await self._try_hops(run, hops)
        if run.events and self.config.tls.reporting and not relaxed:
            await self._count_for_reports(run)
        return _results(run, {})

    async def _count_for_reports(self, run: _DomainRun) -> None:
        # After the next hop's 250: a report store that cannot write (disk full)
        # must cost a few counts, never turn a delivered message into a retry.
        try:
            await self._report_store().record(run.events)
        except (sqlite3.Error, OSError, RelaymailError) as exc:
            log.warning("domain=%s: TLS report counts not stored: %s", run.domain, exc)

    async def plan(self, domain: str, hops: list[NextHop]) -> DomainPlan:
        """The policy delivery to `domain` would follow over `hops` (for `relaymail probe`)."""
        level, source = self.config.tls.policy.level_for(domain)
        run = _DomainRun(domain, level, source, "", b"", b"", False, {})
        await self._apply_published_policies(run, hops, relaxed=False)
        hosts: list[tuple[NextHop, HostPolicy | str]] = []
        for hop in hops:
            try:
                hosts.append((hop, await self._host_policy(run, hop)))
            except _HostFailed as failed:
                hosts.append((hop, failed.detail))
        return DomainPlan(run.level, run.level_source, run.sts, tuple(hosts))

    async def _apply_published_policies(
        self, run: _DomainRun, hops: list[NextHop], relaxed: bool
    ) -> None:
        """Precedence: the config's own entry, then DANE (per host), then MTA-STS."""
        run.published = (
            run.level_source == DEFAULT_SOURCE and hops[0].source in _DNS_HOPS and not relaxed
        )
        if run.published and self.config.tls.mta_sts:
            await self._apply_mta_sts(run)

    async def _apply_mta_sts(self, run: _DomainRun) -> None:
        """RFC 8461 5: an enforce policy makes the domain `verify` with its MX list."""
        if self._sts is None:
            self._sts_cache = StsCache(self.config.queue.directory)
            self._sts = StsResolver(
                self.resolver,
                self._sts_cache,
                https_port=self.config.tls.mta_sts_port,
                ssl_context=https_context(self.config.tls.mta_sts_ca_file),
            )
        lookup = await self._sts.lookup(run.domain)
        policy = lookup.policy
        if lookup.result_type is not None:
            run.events.append(
                TlsEvent(
                    policy_domain=run.domain,
                    success=False,
                    at=time.time(),
                    policy_type=PolicyType.STS,
                    result_type=ResultType(lookup.result_type),
                    failure_reason_code=lookup.error,
                )
            )
            log.warning("domain=%s: MTA-STS policy: %s", run.domain, lookup.error)
        if policy is None or policy.mode is StsMode.NONE:
            return
        run.sts = policy
        where = f"MTA-STS {policy.mode.value} (policy id {policy.policy_id})"
        if policy.mode is StsMode.ENFORCE:
            run.level, run.level_source = Level.VERIFY, where
        else:
            run.level_source += f"; {where}"

    def _report_store(self) -> TlsReportStore:
        if self._reports is None:
            self._reports = TlsReportStore(self.config.queue.directory)
        return self._reports

    async def _try_hops(self, run: _DomainRun, hops: list[NextHop]) -> None:
        failures: list[str] = []
        for hop in hops:
            if run.sts is not None and not run.sts.matches(hop.name):
                detail = f"{hop.name} is not in the MTA-STS policy's mx list ({run.sts.mx})"
                if run.sts.mode is StsMode.ENFORCE:
                    run.note(hop, "-", "sts-mx-mismatch", CLEAR, detail)
                    failures.append(f"{hop.label}: {detail}")
                    continue
                run.note(hop, "-", "sts-testing-mx-mismatch", CLEAR, detail + "; testing only")
            try:
                run.host = await self._host_policy(run, hop)
            except _HostFailed as failed:
                run.note(hop, "-", failed.result, CLEAR, failed.detail)
                failures.append(f"{hop.label}: {failed.detail}")
                continue
            if not hop.addresses:
                detail = hop.lookup_error or "no addresses"
                run.note(hop, "-", "no-address", CLEAR, detail)
                failures.append(f"{hop.label}: {detail}")
                continue
            for ip in hop.addresses:
                if not run.pending:
                    return
                try:
                    await self._try_host(run, hop, ip, starttls=True)
                except Exception as exc:
                    # Anything else is a defect, ours or the server's, that nobody foresaw:
                    # this host fails with the reason and the engine goes on.
                    host = exc if isinstance(exc, _HostFailed) else _unforeseen(exc)
                    run.note(hop, ip, host.result, host.tls, host.detail)
                    failures.append(f"{hop.label}: {host.detail}")
        if run.pending and failures:
            # Recipients that no host accepted: defer with every host's reason,
            # keeping a 4xx reply some host gave them as the reason if there was one.
            summary = "; ".join(failures)
            for rcpt in run.pending:
                outcome = run.outcomes[rcpt]
                if outcome.reply is None:
                    outcome.reason = f"no host accepted the mail: {summary}"

    async def _host_policy(self, run: _DomainRun, hop: NextHop) -> HostPolicy:
        """DANE before MTA-STS (RFC 7672 2.2): usable TLSA records decide this host alone."""
        domain_policy = HostPolicy(run.level, run.level_source)
        if not (run.published and self.config.tls.dane):
            return domain_policy
        lookup = await self._tlsa(hop)
        status = lookup.status
        if status is DaneStatus.UNUSABLE:
            if lookup.result_type is not None and self.config.tls.reporting:
                run.events.append(
                    TlsEvent(
                        policy_domain=run.domain,
                        success=False,
                        at=time.time(),
                        policy_type=PolicyType.TLSA,
                        result_type=lookup.result_type,
                        receiving_mx_hostname=hop.name,
                        failure_reason_code=lookup.error,
                    )
                )
            raise _HostFailed("dane-unusable", f"TLSA lookup failed: {lookup.reason}")
        if status is DaneStatus.AUTHENTICATE:
            return HostPolicy(Level.DANE, f"DANE: {lookup.reason}", lookup)
        if status is DaneStatus.ENCRYPT:
            return HostPolicy(Level.ENCRYPT, f"DANE without usable records: {lookup.reason}")
        return domain_policy

    async def _tlsa(self, hop: NextHop) -> TlsaLookup:
        key = (hop.name, hop.port)
        now = time.monotonic()
        cached = self._tlsa_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        lookup = await lookup_tlsa(self.resolver, hop.name, hop.port)
        self._tlsa_cache[key] = (now + _TLSA_CACHE_SECONDS, lookup)
        return lookup

    async def _try_host(self, run: _DomainRun, hop: NextHop, ip: str, *, starttls: bool) -> None:
        cached = self._take_idle(hop, ip, run.host.level)
        if cached is not None:
            session, caps, tls = cached.session, cached.caps, cached.tls
        else:
            session, caps, tls = await self._open(run, hop, ip, starttls)
        replies_before = session.replies_seen
        kept = False
        try:
            await self._transaction(run, hop, session, caps, tls)
            if session.is_usable and session.conn.state is State.READY:
                self._keep_idle(hop, ip, run.host.level, _Cached(session, caps, tls))
                kept = True
        except SessionError as exc:
            session.abort()
            if cached is not None and session.replies_seen == replies_before:
                # The server closed the idle session as we reused it: not the host's fault.
                return await self._try_host(run, hop, ip, starttls=starttls)
            raise _HostFailed("session-failed", f"{exc} (during the mail transaction)") from None
        finally:
            # Whatever ended the transaction, a session not kept for reuse is closed here.
            if not kept:
                await session.quit()

    async def _open(
        self, run: _DomainRun, hop: NextHop, ip: str, starttls: bool
    ) -> tuple[SmtpSession, Capabilities, TlsFacts]:
        try:
            session = await self._connect(hop, ip)
        except SessionError as exc:
            raise _HostFailed("connect-failed", str(exc)) from None
        try:
            greeting = (await session.read_reply()).reply
            if not greeting.is_success:
                # Like Postfix, a 5xx greeting skips the host rather than bouncing.
                raise _HostFailed("greeting-refused", f"greeting {greeting}")
            caps = await self._hello(session)
            tls = CLEAR
            level = run.host.level
            if wants_starttls(level) and starttls:
                tls, caps, session = await self._starttls_step(run, hop, ip, session, caps)
            elif not starttls:
                run.note(hop, ip, "reconnected-clear", CLEAR, "new session without STARTTLS")
            if level.requires_tls and not tls.used:
                # The table never gets here; this guard is the last line against a leak.
                raise _HostFailed("tls-required", f"policy {level.value} requires TLS")
            return session, caps, tls
        except SessionError as exc:
            session.abort()
            raise _HostFailed("session-failed", str(exc)) from None
        except BaseException:
            # A policy refusal or anything unforeseen: QUIT if the session still can, then close.
            await session.quit()
            raise

    async def _connect(self, hop: NextHop, ip: str) -> SmtpSession:
        settings = self.config.delivery
        return await SmtpSession.open(
            ip, hop.port,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
        )  # fmt: skip

    async def _hello(self, session: SmtpSession) -> Capabilities:
        helo_name = self.config.delivery.helo_name
        reply = await session.command(Verb.EHLO, helo_name)
        if reply.is_success:
            return Capabilities.from_ehlo(reply)
        if not reply.is_permanent:
            raise _HostFailed("ehlo-refused", f"EHLO answered {reply}")
        # RFC 5321 3.2: a server that does not speak ESMTP gets HELO.
        helo = await session.command(Verb.HELO, helo_name)
        if not helo.is_success:
            raise _HostFailed("helo-refused", f"EHLO answered {reply}; HELO answered {helo}")
        return Capabilities.from_helo()

    async def _starttls_step(
        self, run: _DomainRun, hop: NextHop, ip: str, session: SmtpSession, caps: Capabilities
    ) -> tuple[TlsFacts, Capabilities, SmtpSession]:
        step = await self._starttls.run(run.domain, hop, session, caps, run.host)
        event, tls, decision = step.event, step.tls, step.decision
        # RFC 8460 reports on the domain's own MX hosts: a static route or smarthost is
        # the sender's infrastructure, not the recipient domain's.
        if self.config.tls.reporting and hop.source in _DNS_HOPS:
            local = session.local_address
            run.events.append(self._session_event(run, hop, ip, event, tls, step.detail, local))
        result = {
            Action.USE_TLS: "tls",
            Action.CONTINUE_CLEAR: "continued-clear",
            Action.RECONNECT_CLEAR: "tls-failed-reconnect-clear",
            Action.HOST_FAILS: "tls-policy-failed",
        }[decision.action]
        if decision.action is Action.USE_TLS:
            if event is Event.UNVERIFIED:
                run.note(hop, ip, result, tls, decision.reason)
            return tls, await self._hello(session), session
        if decision.action is Action.HOST_FAILS:
            raise _HostFailed(result, decision.reason, tls)  # the caller QUITs where it can
        run.note(hop, ip, result, CLEAR, decision.reason)
        if decision.action is Action.CONTINUE_CLEAR:
            return CLEAR, caps, session
        session.abort()
        fresh, fresh_caps, _ = await self._open(run, hop, ip, starttls=False)
        return CLEAR, fresh_caps, fresh

    @staticmethod
    def _session_event(
        run: _DomainRun,
        hop: NextHop,
        ip: str,
        event: Event,
        tls: TlsFacts,
        detail: str,
        local_ip: str | None,
    ) -> TlsEvent:
        sts, dane = run.sts, run.host.dane
        if dane is not None:
            policy_type, strings = PolicyType.TLSA, tuple(str(r) for r in dane.records)
        elif sts is not None:
            policy_type, strings = PolicyType.STS, tuple(sts.text.splitlines())
        else:
            policy_type, strings = PolicyType.NO_POLICY_FOUND, ()
        return session_event(
            run.domain, event=event, tls=tls, detail=detail, mx_hostname=hop.name,
            receiving_ip=ip, at=time.time(),
            verification_required=run.host.level.requires_verification or sts is not None,
            policy_type=policy_type, policy_strings=strings,
            mx_host_patterns=sts.mx if sts and dane is None else (),
            sending_mta_ip=local_ip,
        )  # fmt: skip

    async def inspect_host(
        self, domain: str, hop: NextHop, ip: str, policy: HostPolicy
    ) -> HostInspection:
        """Connect, EHLO, STARTTLS and QUIT without sending mail (for `relaymail probe`)."""
        level = policy.level
        try:
            session = await self._connect(hop, ip)
        except SessionError as exc:
            return HostInspection(hop, ip, error=str(exc))
        try:
            greeting = (await session.read_reply()).reply
            if not greeting.is_success:
                return HostInspection(hop, ip, greeting=str(greeting), error="greeting refused")
            caps = await self._hello(session)
            step = await self._starttls.run(domain, hop, session, caps, policy)
            after = await self._hello(session) if step.tls.used else None
            return HostInspection(
                hop, ip, greeting=str(greeting), capabilities=caps, event=step.event,
                tls=step.tls, capabilities_after_tls=after, decision=step.decision, level=level,
                level_source=policy.source,
            )  # fmt: skip
        except (SessionError, _HostFailed) as exc:
            return HostInspection(hop, ip, error=str(exc))
        finally:
            await session.quit()

    async def _transaction(
        self, run: _DomainRun, hop: NextHop, session: SmtpSession, caps: Capabilities,
        tls: TlsFacts,
    ) -> None:  # fmt: skip
        ip = session.address
        rcpts = run.pending
        try:
            data, stuffed = run.data_for(caps)
        except ConversionImpossible as exc:
            reason = f"{hop.label} does not offer 8BITMIME and conversion to 7-bit failed: {exc}"
            run.settle(rcpts, Status.BOUNCED, reason, host=hop.label, tls=tls, enhanced="5.6.3")
            run.note(hop, ip, "8bitmime-refused", tls, reason)
            return
        size = len(data)
        limit = caps.size_limit
        if limit is not None and size > limit:
            reason = f"message size {size} exceeds the limit of {hop.label} ({limit}, from SIZE)"
            run.settle(rcpts, Status.BOUNCED, reason, host=hop.label, tls=tls)
            run.note(hop, ip, "size-refused", tls, reason)
            return
        if run.needs_smtputf8 and "SMTPUTF8" not in caps:
            reason = f"{hop.label} does not offer SMTPUTF8, needed for an international address"
            run.settle(rcpts, Status.BOUNCED, reason, host=hop.label, tls=tls)
            run.note(hop, ip, "smtputf8-refused", tls, reason)
            return
        if session.conn.in_transaction:
            reset = await session.command(Verb.RSET)
            if not reset.is_success:
                raise SessionError(f"RSET answered {reset}")
        params = _mail_parameters(caps, size, data, run.needs_smtputf8)
        group = [(Verb.MAIL, f"FROM:<{run.sender}>{params}")]
        group += [(Verb.RCPT, f"TO:<{r}>") for r in rcpts]
        group.append((Verb.DATA, ""))
        pipelining = "PIPELINING" in caps
        if pipelining:
            session.write(group)
        replies: list[Reply] = []
        for verb, arg in group:
            if not pipelining:
                if verb is Verb.RCPT and not replies[0].is_success:
                    break
                if verb is Verb.DATA and not any(r.is_success for r in replies[1:]):
                    break
                session.write([(verb, arg)])
            reply = (await session.read_reply()).reply
            replies.append(reply)
            if reply.code == 421:
                break
        self._settle_envelope(run, hop, ip, rcpts, replies, tls)
        accepted = [r for r, reply in zip(rcpts, replies[1:], strict=False) if reply.is_success]
        if not replies[0].is_success:
            accepted = []
        data_reply = replies[len(rcpts) + 1] if len(replies) == len(rcpts) + 2 else None
        if data_reply is None or data_reply.code == 421:
            if accepted:
                reason = f"{hop.label} ended the session before DATA: {replies[-1]}"
                run.settle(
                    accepted, Status.DEFERRED, reason, host=hop.label, reply=replies[-1], tls=tls
                )
            return
        if data_reply.code != 354:
            if accepted:
                status = Status.BOUNCED if data_reply.is_permanent else Status.DEFERRED
                reason = f"{hop.label} refused DATA: {data_reply}"
                run.settle(accepted, status, reason, host=hop.label, reply=data_reply, tls=tls)
                run.note(hop, ip, status.value, tls, reason)
            return
        if not accepted:
            # RFC 2920 3.1: a 354 after every RCPT failed still wants data; send none.
            session.write_terminator()
            await session.read_reply()
            return
        final = await session.send_message(stuffed, self.config.delivery.data_timeout)
        if final.is_success:
            status, reason = Status.DELIVERED, f"accepted by {hop.label}"
        elif final.is_transient:
            status, reason = Status.DEFERRED, f"{hop.label} deferred the message: {final}"
        else:
            status, reason = Status.BOUNCED, f"{hop.label} rejected the message: {final}"
        run.settle(accepted, status, reason, host=hop.label, reply=final, tls=tls)
        run.note(hop, ip, status.value, tls, f"{len(accepted)} recipient(s): {final}")

    def _settle_envelope(
        self, run: _DomainRun, hop: NextHop, ip: str, rcpts: list[str], replies: list[Reply],
        tls: TlsFacts,
    ) -> None:  # fmt: skip
        """Apply the MAIL and RCPT replies: 5xx bounces, 4xx stays pending for the next host."""
        mail = replies[0]
        if not mail.is_success:
            status = Status.BOUNCED if mail.is_permanent else Status.DEFERRED
            reason = f"{hop.label} refused the sender: {mail}"
            run.settle(rcpts, status, reason, host=hop.label, reply=mail, tls=tls)
            run.note(hop, ip, f"mail-{status.value}", tls, reason)
            return
        for rcpt, reply in zip(rcpts, replies[1:], strict=False):
            if reply.is_permanent:
                reason = f"{hop.label} refused the recipient: {reply}"
                run.settle([rcpt], Status.BOUNCED, reason, host=hop.label, reply=reply, tls=tls)
                run.note(hop, ip, "rcpt-bounced", tls, f"{rcpt}: {reply}")
            elif reply.is_transient:
                reason = f"{hop.label} deferred the recipient: {reply}"
                run.settle([rcpt], Status.DEFERRED, reason, host=hop.label, reply=reply, tls=tls)
                run.note(hop, ip, "rcpt-deferred", tls, f"{rcpt}: {reply}")

    def _take_idle(self, hop: NextHop, ip: str, level: Level) -> _Cached | None:
        entries = self._idle.get((ip, hop.port, hop.name, level))
        while entries:
            cached = entries.pop()
            if cached.expires is not None:
                cached.expires.cancel()
            if cached.session.is_usable:
                return cached
            cached.session.abort()
        return None

    def _keep_idle(self, hop: NextHop, ip: str, level: Level, cached: _Cached) -> None:
        key = (ip, hop.port, hop.name, level)
        loop = asyncio.get_running_loop()
        cached.expires = loop.call_later(
            self.config.delivery.connection_idle_time, self._expire, key, cached
        )
        self._idle[key].append(cached)

    def _expire(self, key: tuple[str, int, str, Level], cached: _Cached) -> None:
        entries = self._idle.get(key, [])
        if cached in entries:
            entries.remove(cached)
            asyncio.get_running_loop().create_task(cached.session.quit())


_DNS_HOPS = (HopSource.MX, HopSource.IMPLICIT_MX)
# TLSA answers are reused this long (seconds); DNSSEC lookups cost three queries per host.
_TLSA_CACHE_SECONDS = 60.0
_TLS_NOT_REQUIRED = re.compile(rb"(?im)^TLS-Required:[ \t]*No[ \t]*\r?$")


def tls_not_required(data: bytes) -> bool:
    """Whether the header section carries RFC 8689's `TLS-Required: No`."""
    return bool(_TLS_NOT_REQUIRED.search(header_section(data)))


def _mail_parameters(caps: Capabilities, size: int, data: bytes, smtputf8: bool) -> str:
    params = []
    if "SIZE" in caps:
        params.append(f" SIZE={size}")
    if "8BITMIME" in caps and not data.isascii():
        params.append(" BODY=8BITMIME")
    if smtputf8:
        params.append(" SMTPUTF8")
    return "".join(params)


def _results(run: _DomainRun, statuses: dict[str, str]) -> list[RecipientResult]:
    attempts = tuple(run.attempts)
    return [
        RecipientResult(
            recipient=rcpt,
            status=o.status,
            reason=o.reason,
            host=o.host,
            reply=str(o.reply) if o.reply else None,
            tls=o.tls,
            attempts=attempts,
            enhanced_status=statuses.get(rcpt)
            or o.enhanced
            or (o.reply.enhanced if o.reply else None),
        )
        for rcpt, o in run.outcomes.items()
    ]


async def deliver(envelope: Envelope, data: bytes, config: Config) -> list[RecipientResult]:
    """Deliver one message now with a fresh engine (the daemon keeps one engine instead)."""
    engine = DeliveryEngine(config)
    try:
        return await engine.deliver(envelope, data)
    finally:
        await engine.close()
