"""One delivery: a message to its recipients, host by host, the TLS policy applied.

For each recipient domain: resolve the next hops, plan the TLS policy
(plan.py), try the hosts in order, and for each session apply the policy
table (tls/policy.py) at the STARTTLS step. Every step that matters becomes
an Attempt, so each result can say why it went the way it did. The host
policy travels with each attempt (`Target`); nothing reads it from shared state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass

from ..body import MessageBody
from ..config import Config, RelayAuth, Scheme
from ..errors import AddressError, BodyUnreadable, ConnectFailed, RelaymailError, SessionError
from ..expiring import ExpiringMap
from ..message import Envelope, domain_of
from ..routing import Destination, HopSource, NextHop, Router, RoutingError, make_resolver
from ..shaping import MxGroup, ShapingSettings
from ..slot_table import UNKNOWN, GroupUnknown, destination_shape
from ..smtp.client import Capabilities, State, Verb
from ..smtp.session import SmtpSession
from ..tls.context import CLEAR, TlsFacts
from ..tls.dane import TlsaLookup, lookup_tlsa
from ..tls.memory import TlsMemory
from ..tls.mta_sts import StsCache, StsMode, StsPolicy, StsResolver, https_context
from ..tls.policy import NOT_ASKED, Action, Decision, Event, Level, wants_starttls
from ..tls.reporting import TlsEvent, TlsReportStore, session_event
from ..tls.results import PolicyType, ResultType
from . import requiretls
from .auth import LoginFailureLog, credentialed_policy, log_in
from .host_failure import HostFailed, unforeseen
from .judgement import judged, tls_step
from .plan import DNS_HOPS, DomainPlan, HostPolicy, HostRefused, plan, published_policies_apply
from .pool import IdleSession, SessionPool
from .results import AttemptResult, RecipientResult, Status, TlsStep
from .run import DomainRun, Outcome, SessionInUse, Target, observe_step
from .starttls import StarttlsStep
from .transaction import probe, transaction

log = logging.getLogger("relaymail.delivery")


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
        self._tlsa_cache: ExpiringMap[tuple[str, int], TlsaLookup] = ExpiringMap()
        self._memory = (
            TlsMemory(config.queue, config.tls.remember_for)
            if config.tls.remember
            else None
        )
        self._starttls = StarttlsStep(config.tls, self._memory)
        self._pool = SessionPool(config.delivery.connection_idle_time)
        self._login_failures = LoginFailureLog()
        # Each domain's MX group, learnt by routing it: None when it is in none.
        self._groups: ExpiringMap[str, tuple[MxGroup | None]] = ExpiringMap()

    async def deliver(
        self, envelope: Envelope, data: bytes | MessageBody, *, queue_id: str | None = None
    ) -> list[RecipientResult]:
        """Deliver canonical message data (CRLF, not dot-stuffed); one result per recipient.

        A MessageBody is read as each session reaches DATA (the queue's bodies); a body
        that cannot be read defers the recipients not yet accepted (BODY_UNREADABLE).
        How many deliveries run at once, in all and per destination, is the caller's
        to decide (the scheduler's slot table). `queue_id` goes on every attempt line,
        so `grep ID` finds all of a message's lines.
        """
        body = data if isinstance(data, MessageBody) else MessageBody.of(data)
        by_domain: dict[str, list[str]] = defaultdict(list)
        results: dict[str, RecipientResult] = {}
        for rcpt in envelope.recipients:
            try:
                by_domain[domain_of(rcpt)].append(rcpt)
            except AddressError as exc:  # queued by a way in that did not check it
                results[rcpt] = RecipientResult.bad_address(rcpt, exc)
        domains = [
            self._deliver_domain(d, rcpts, envelope, body, queue_id)
            for d, rcpts in by_domain.items()
        ]
        # The usual message has one domain: it needs no task of its own.
        runs = [await domains[0]] if len(domains) == 1 else await asyncio.gather(*domains)
        results.update((r.recipient, r) for run in runs for r in run)
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
        await self._pool.close()

    def forget_idle_sessions(self) -> None:
        """QUIT the sessions kept for reuse, for an administrator's retry: a session opened
        before a change at the destination may still answer as it did (a Postfix smtpd keeps
        its configuration until its connection ends), deferring again what was retried."""
        self._pool.forget_idle()

    async def verify_recipient(self, address: str, sender: str = "") -> RecipientResult:
        """Ask the next hops whether they take `address` (Postfix's address verification).

        The same routing, TLS policy and sessions as delivery, but MAIL FROM:<sender>,
        RCPT and RSET only, never DATA: DELIVERED means a host accepted the recipient,
        BOUNCED that one refused it with a 5xx (or the domain has no usable route),
        DEFERRED that no host could say.
        """
        envelope = Envelope(sender, (address,))
        [result] = await self._deliver_domain(
            domain_of(address), [address], envelope, MessageBody.of(b""), None, probe_only=True
        )
        return result

    def destination(self, domain: str) -> Destination:
        """Where mail to `domain` goes, as per-destination limits count it (routing.py)."""
        return self.router.destination(domain)

    @property
    def destination_concurrency(self) -> int:
        return self.config.delivery.destination_concurrency

    @property
    def shaping(self) -> ShapingSettings:
        return self.config.shaping

    def shaping_group(self, destination: Destination) -> MxGroup | GroupUnknown | None:
        """The MX group `destination` counts in, as its last routing found; UNKNOWN before."""
        if destination.routed or not self.config.shaping.groups:
            return None
        known = self._groups.get(destination.name, time.monotonic())
        return UNKNOWN if known is None else known[0]

    def _learn_group(self, domain: str, hops: list[NextHop]) -> None:
        if not self.config.shaping.groups or not hops or hops[0].source not in DNS_HOPS:
            return
        # The most preferred MX hosts decide: a backup MX elsewhere does not move a domain.
        first = [h.name for h in hops if h.preference == hops[0].preference]
        now = time.monotonic()
        group = self.config.shaping.group_of(first)
        self._groups.put(domain, (group,), now + _GROUP_SECONDS, now)

    async def _deliver_domain(
        self, domain: str, rcpts: list[str], envelope: Envelope, body: MessageBody,
        queue_id: str | None, *, probe_only: bool = False,
    ) -> list[RecipientResult]:  # fmt: skip
        level, source = self.config.tls.policy.level_for(domain)
        run = DomainRun(
            domain, DomainPlan(level, source), envelope.sender, body,
            envelope.needs_smtputf8, {r: Outcome() for r in rcpts}, probe_only,
            queue_id=queue_id, requiretls=envelope.requiretls, dsn=envelope.dsn,
        )  # fmt: skip
        try:
            # RFC 8689 TLS-Required: No (TLS reports carry it): the domain's published
            # policies do not apply, and the session is not counted in its reports;
            # unless MAIL FROM asked for REQUIRETLS, which wins (RFC 8689 4.1).
            relaxed = requiretls.tls_not_required(body.head()) and not envelope.requiretls
            hops = await self.router.next_hops(domain)
            self._learn_group(domain, hops)
        except BodyUnreadable as exc:
            run.body_unreadable(exc)
            return run.results({})
        except RoutingError as exc:
            status = Status.BOUNCED if exc.permanent else Status.DEFERRED
            run.settle(rcpts, status, exc.reason)
            return run.results({r: exc.status for r in rcpts})
        run.plan = await self._plan(domain, hops, relaxed, run.events)
        await self._try_hops(run, hops)
        if run.events and self.config.tls.reporting and not relaxed:
            await self._count_for_reports(run)
        return run.results({})

    async def _count_for_reports(self, run: DomainRun) -> None:
        # After the next hop's 250: a report store that cannot write (disk full)
        # must cost a few counts, never turn a delivered message into a retry.
        try:
            await self._report_store().record(run.events)
        except (sqlite3.Error, OSError, RelaymailError) as exc:
            log.warning("domain=%s: TLS report counts not stored: %s", run.domain, exc)

    async def plan(self, domain: str, hops: list[NextHop]) -> DomainPlan:
        """The policy delivery to `domain` would follow over `hops` (for `relaymail probe`)."""
        events: list[TlsEvent] = []
        domain_plan = await self._plan(domain, hops, False, events)
        hosts: list[tuple[NextHop, HostPolicy | str]] = []
        for hop in hops:
            policy = await self._host_policy(domain, domain_plan, hop, events)
            hosts.append((hop, policy.detail if isinstance(policy, HostRefused) else policy))
        return dataclasses.replace(domain_plan, hosts=tuple(hosts))

    async def _plan(
        self, domain: str, hops: list[NextHop], relaxed: bool, events: list[TlsEvent]
    ) -> DomainPlan:
        """Look up what the precedence needs (MTA-STS here, DANE per host later), then plan."""
        level, source = self.config.tls.policy.level_for(domain)
        published = published_policies_apply(source, hops, relaxed)
        sts = await self._mta_sts(domain, events) if published and self.config.tls.mta_sts else None
        return plan(level, source, published=published, sts=sts, dane=self.config.tls.dane)

    async def _mta_sts(self, domain: str, events: list[TlsEvent]) -> StsPolicy | None:
        if self._sts is None:
            self._sts_cache = StsCache(self.config.queue)
            self._sts = StsResolver(
                self.resolver,
                self._sts_cache,
                https_port=self.config.tls.mta_sts_port,
                ssl_context=https_context(self.config.tls.mta_sts_ca_file),
            )
        lookup = await self._sts.lookup(domain)
        if lookup.result_type is not None:
            events.append(_lookup_failed(domain, PolicyType.STS, lookup.result_type, lookup.error))
            log.warning("domain=%s: MTA-STS policy: %s", domain, lookup.error)
        return lookup.policy

    def _report_store(self) -> TlsReportStore:
        if self._reports is None:
            self._reports = TlsReportStore(self.config.queue)
        return self._reports

    async def _try_hops(self, run: DomainRun, hops: list[NextHop]) -> None:
        failures: list[str] = []
        failed: list[AttemptResult] = []  # each failure's result, for REQUIRETLS's verdict
        domain_plan = run.plan
        for hop in hops:
            unlisted = Target(hop, "-", domain_plan.policy)
            mismatch = domain_plan.mx_mismatch(hop)
            if mismatch is not None:
                assert domain_plan.sts is not None
                if domain_plan.sts.mode is StsMode.ENFORCE:
                    run.note(unlisted, AttemptResult.STS_MX_MISMATCH, CLEAR, mismatch)
                    failures.append(f"{hop.label}: {mismatch}")
                    failed.append(AttemptResult.STS_MX_MISMATCH)
                    continue
                detail = mismatch + "; testing only"
                run.note(unlisted, AttemptResult.STS_TESTING_MX_MISMATCH, CLEAR, detail)
            policy = await self._host_policy(run.domain, domain_plan, hop, run.events)
            if run.requiretls:
                policy = requiretls.host_policy(policy, hop)
            if isinstance(policy, HostRefused):
                run.note(unlisted, policy.result, CLEAR, policy.detail)
                failures.append(f"{hop.label}: {policy.detail}")
                failed.append(policy.result)
                continue
            if not hop.addresses:
                detail = hop.lookup_error or "no addresses"
                run.note(Target(hop, "-", policy), AttemptResult.NO_ADDRESS, CLEAR, detail)
                failures.append(f"{hop.label}: {detail}")
                failed.append(AttemptResult.NO_ADDRESS)
                continue
            for ip in hop.addresses:
                if not run.pending:
                    return
                at = Target(hop, ip, policy)
                try:
                    await self._try_host(run, at, starttls=True)
                except BodyUnreadable as exc:
                    # Not the host's fault, and no other host could be sent it either.
                    run.body_unreadable(exc, at)
                    return
                except Exception as exc:
                    # Anything else is a defect, ours or the server's, that nobody foresaw:
                    # this host fails with the reason and the engine goes on.
                    host = exc if isinstance(exc, HostFailed) else unforeseen(exc)
                    run.note(at, host.result, host.tls, host.detail, host.step)
                    failures.append(f"{hop.label}: {host.detail}")
                    failed.append(host.result)
        summary = "; ".join(failures)
        if run.pending and failures and not requiretls.bounce_if_no_host_can(run, failed, summary):
            # Recipients that no host accepted: defer with every host's reason,
            # keeping a 4xx reply some host gave them as the reason if there was one.
            for rcpt in run.pending:
                outcome = run.outcomes[rcpt]
                if outcome.reply is None:
                    outcome.reason = f"no host accepted the mail: {summary}"
                    outcome.setup_seconds = run.setup_spent

    async def _host_policy(
        self, domain: str, domain_plan: DomainPlan, hop: NextHop, events: list[TlsEvent]
    ) -> HostPolicy | HostRefused:
        tlsa = await self._tlsa(hop) if domain_plan.dane else None
        policy = domain_plan.host(tlsa)
        auth = self._credentials(hop)
        if auth is not None and isinstance(policy, HostPolicy):
            return credentialed_policy(policy, hop.name, auth)
        if (
            isinstance(policy, HostRefused)
            and tlsa is not None
            and tlsa.result_type is not None
            and self.config.tls.reporting
        ):
            failed = _lookup_failed(domain, PolicyType.TLSA, tlsa.result_type, tlsa.error, hop)
            events.append(failed)
        return policy

    def _credentials(self, hop: NextHop) -> RelayAuth | None:
        """The [relay_auth] entry for a [routes] host; MX hosts never get credentials."""
        return self.config.relay_auth.get(hop.name) if hop.source is HopSource.ROUTE else None

    async def _tlsa(self, hop: NextHop) -> TlsaLookup:
        key = (hop.name, hop.port)
        now = time.monotonic()
        cached = self._tlsa_cache.get(key, now)
        if cached is not None:
            return cached
        lookup = await lookup_tlsa(self.resolver, hop.name, hop.port)
        self._tlsa_cache.put(key, lookup, now + _TLSA_CACHE_SECONDS, now)
        return lookup

    async def _try_host(self, run: DomainRun, at: Target, *, starttls: bool) -> None:
        hop, ip, level = at.hop, at.ip, at.policy.level
        idle = self._pool.take(hop, ip, level, at.policy.requiretls)
        if idle is not None and await self._starttls.kept_below_memory(run.domain, at.policy, idle):
            self._pool.keep(hop, ip, level, idle, at.policy.requiretls)  # still others'
            idle = None  # a new session, judged with the memory as it is now
        if idle is not None:
            session, caps, tls, decision = idle.session, idle.caps, idle.tls, idle.decision
        else:
            with run.setting_up():
                session, caps, tls, decision = await self._open(run, at, starttls)
        replies_before = session.replies_seen
        kept = False
        try:
            data_timeout = self.config.delivery.data_timeout
            run.session = SessionInUse(at, decision)
            exchange = probe if run.probe_only else transaction
            await exchange(run, at, session, caps, tls, data_timeout)
            sent = (idle.messages if idle is not None else 0) + (not run.probe_only)
            spent = sent >= self._messages_per_connection(run.domain)
            if session.is_usable and session.conn.state is State.READY and not spent:
                kept_session = IdleSession(session, caps, tls, decision, sent)
                self._pool.keep(hop, ip, level, kept_session, at.policy.requiretls)
                kept = True
        except SessionError as exc:
            session.abort()
            if idle is not None and session.replies_seen == replies_before:
                # The server closed the idle session as we reused it: not the host's fault.
                return await self._try_host(run, at, starttls=starttls)
            raise HostFailed(
                AttemptResult.SESSION_FAILED, f"{exc} (during the mail transaction)"
            ) from None
        finally:
            run.session = None
            # Whatever ended the transaction, a session not kept for reuse is closed here.
            if not kept:
                await session.quit()

    def _messages_per_connection(self, domain: str) -> int:
        destination = self.destination(domain)
        shape = destination_shape(self.shaping, destination, self.shaping_group(destination))
        return shape.max_messages_per_connection

    async def _open(
        self, run: DomainRun, at: Target, starttls: bool
    ) -> tuple[SmtpSession, Capabilities, TlsFacts, TlsStep | None]:
        """A session ready for MAIL, with what the TLS policy decided on the way (if asked)."""
        try:
            session = await self._connect(at.hop, at.ip)
        except ConnectFailed as exc:  # ConnectTimeout too
            raise HostFailed(AttemptResult.CONNECT_FAILED, str(exc)) from None
        except SessionError as exc:  # the handshake of an implicit-TLS port
            raise HostFailed(AttemptResult.SESSION_FAILED, str(exc)) from None
        try:
            implicit = session.conn.tls
            # Judged before the greeting: nothing is read from a peer the policy refuses.
            tls, decision = self._judge_implicit(run, at, session) if implicit else (CLEAR, None)
            greeting = (await session.read_reply()).reply
            if not greeting.is_success:
                # Like Postfix, a 5xx greeting skips the host rather than bouncing.
                raise HostFailed(AttemptResult.GREETING_REFUSED, f"greeting {greeting}")
            caps = await self._hello(session)
            level = at.policy.level
            if not implicit and wants_starttls(level) and starttls:
                tls, caps, session, decision = await self._starttls_step(run, at, session, caps)
            elif not starttls:
                detail = "new session without STARTTLS"
                run.note(at, AttemptResult.RECONNECTED_CLEAR, CLEAR, detail)
            elif not implicit:  # level none: STARTTLS is never asked
                tls = judged(CLEAR, None, at.policy)
            if level.requires_tls and not tls.used:
                # The table never gets here; this guard is the last line against a leak.
                raise HostFailed(AttemptResult.TLS_REQUIRED, f"policy {level.value} requires TLS")
            fallback = self.config.tls.tempfail_fallback
            if refusal := requiretls.ready_for_mail(at.policy, tls, caps, fallback):
                raise HostFailed(refusal.result, refusal.reason, tls, refusal)
            auth = self._credentials(at.hop)
            if auth is not None:
                refused = await log_in(session, caps, auth)
                if refused is not None:
                    self._login_failures.refused(at.hop.label, refused)
                    raise HostFailed(refused.result, refused.detail, tls)
            return session, caps, tls, decision
        except SessionError as exc:
            session.abort()
            raise HostFailed(AttemptResult.SESSION_FAILED, str(exc)) from None
        except BaseException:
            # A policy refusal or anything unforeseen: QUIT if the session still can, then close.
            await session.quit()
            raise

    async def _connect(self, hop: NextHop, ip: str) -> SmtpSession:
        settings = self.config.delivery
        implicit = self._starttls.implicit_tls(hop) if hop.scheme is Scheme.SMTPS else None
        return await SmtpSession.open(
            ip, hop.port,
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            implicit_tls=implicit,
        )  # fmt: skip

    def _judge_implicit(
        self, run: DomainRun, at: Target, session: SmtpSession
    ) -> tuple[TlsFacts, TlsStep]:
        """The TLS of an smtps:// route, held to the host's level like STARTTLS's."""
        outcome = self._starttls.judge_implicit(at.hop, session, at.policy)
        step = tls_step(at, outcome)
        if outcome.decision.action.gives_up:
            raise HostFailed(outcome.result, outcome.decision.reason, outcome.tls, step)
        if outcome.event is Event.UNVERIFIED:
            run.note(at, outcome.result, outcome.tls, outcome.decision.reason, step)
        else:
            observe_step(run, at, outcome.tls, outcome.result, outcome.decision.reason, step)
        return judged(outcome.tls, outcome.event, at.policy), step

    async def _hello(self, session: SmtpSession) -> Capabilities:
        helo_name = self.config.delivery.helo_name
        reply = await session.command(Verb.EHLO, helo_name)
        if reply.is_success:
            return Capabilities.from_ehlo(reply)
        if not reply.is_permanent:
            raise HostFailed(AttemptResult.EHLO_REFUSED, f"EHLO answered {reply}")
        # RFC 5321 3.2: a server that does not speak ESMTP gets HELO.
        helo = await session.command(Verb.HELO, helo_name)
        if not helo.is_success:
            detail = f"EHLO answered {reply}; HELO answered {helo}"
            raise HostFailed(AttemptResult.HELO_REFUSED, detail)
        return Capabilities.from_helo()

    async def _starttls_step(
        self, run: DomainRun, at: Target, session: SmtpSession, caps: Capabilities
    ) -> tuple[TlsFacts, Capabilities, SmtpSession, TlsStep]:
        """Enact what the table decided at the STARTTLS step (observe and decide: starttls.py)."""
        hop, ip = at.hop, at.ip
        outcome = await self._starttls.run(run.domain, hop, session, caps, at.policy)
        event, tls, decision = outcome.event, outcome.tls, outcome.decision
        # RFC 8460 reports on the domain's own MX hosts only (DNS_HOPS).
        if self.config.tls.reporting and hop.source in DNS_HOPS:
            local = session.local_address
            run.events.append(self._session_event(run, at, event, tls, outcome.detail, local))
        result, step = outcome.result, tls_step(at, outcome)
        if decision.action is Action.USE_TLS:
            if event is Event.UNVERIFIED:
                run.note(at, result, tls, decision.reason, step)
            else:  # not an attempt worth listing in results; still a decision to log and count
                observe_step(run, at, tls, result, decision.reason, step)
            return judged(tls, event, at.policy), await self._hello(session), session, step
        if decision.action.gives_up:
            raise HostFailed(result, decision.reason, tls, step)  # the caller QUITs where it can
        run.note(at, result, CLEAR, decision.reason, step)
        clear = judged(CLEAR, event, at.policy)
        if decision.action is Action.CONTINUE_CLEAR and session.conn.state is not State.CLOSED:
            return clear, caps, session, step
        session.abort()  # also after a 421 to STARTTLS: the same choice, on a new connection
        fresh, fresh_caps, _, _ = await self._open(run, Target(hop, ip, at.policy), starttls=False)
        return clear, fresh_caps, fresh, step

    @staticmethod
    def _session_event(
        run: DomainRun, at: Target, event: Event, tls: TlsFacts, detail: str, local_ip: str | None
    ) -> TlsEvent:
        sts, dane = run.plan.sts, at.policy.dane
        if dane is not None:
            policy_type, strings = PolicyType.TLSA, tuple(str(r) for r in dane.records)
        elif sts is not None:
            policy_type, strings = PolicyType.STS, tuple(sts.text.splitlines())
        else:
            policy_type, strings = PolicyType.NO_POLICY_FOUND, ()
        return session_event(
            run.domain, event=event, tls=tls, detail=detail, mx_hostname=at.hop.name,
            receiving_ip=at.ip, at=time.time(),
            verification_required=at.policy.level.requires_verification or sts is not None,
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
            if session.conn.tls:
                # An smtps:// route: TLS came before the greeting, judged as delivery does.
                step = self._starttls.judge_implicit(hop, session, policy)
                return HostInspection(
                    hop, ip, greeting=str(greeting), event=step.event, tls=step.tls,
                    capabilities_after_tls=caps, decision=step.decision, level=level,
                    level_source=policy.source,
                )  # fmt: skip
            if not wants_starttls(level):
                # Delivery sends no STARTTLS under `none`, so neither does its preview.
                return HostInspection(
                    hop, ip, greeting=str(greeting), capabilities=caps, decision=NOT_ASKED,
                    level=level, level_source=policy.source,
                )  # fmt: skip
            step = await self._starttls.run(domain, hop, session, caps, policy)
            after = await self._hello(session) if step.tls.used else None
            return HostInspection(
                hop, ip, greeting=str(greeting), capabilities=caps, event=step.event,
                tls=step.tls, capabilities_after_tls=after, decision=step.decision, level=level,
                level_source=policy.source,
            )  # fmt: skip
        except (SessionError, HostFailed) as exc:
            return HostInspection(hop, ip, error=str(exc))
        finally:
            await session.quit()


# TLSA answers are reused this long (seconds); DNSSEC lookups cost three queries per host.
_TLSA_CACHE_SECONDS = 60.0
# A domain's MX group is looked up again with its MX this often at most (a move to
# another provider takes this long to change which limits it counts against).
_GROUP_SECONDS = 3600.0


def _lookup_failed(
    domain: str,
    policy_type: PolicyType,
    result_type: ResultType,
    error: str | None,
    hop: NextHop | None = None,
) -> TlsEvent:
    """A TLS report failure for a policy that could not be fetched or validated."""
    return TlsEvent(
        policy_domain=domain,
        success=False,
        at=time.time(),
        policy_type=policy_type,
        result_type=result_type,
        receiving_mx_hostname=hop.name if hop else None,
        failure_reason_code=error,
    )


async def deliver(envelope: Envelope, data: bytes, config: Config) -> list[RecipientResult]:
    """Deliver one message now with a fresh engine (the daemon keeps one engine instead)."""
    engine = DeliveryEngine(config)
    try:
        return await engine.deliver(envelope, data)
    finally:
        await engine.close()
