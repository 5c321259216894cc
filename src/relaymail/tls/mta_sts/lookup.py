"""StsResolver: one MTA-STS lookup per delivery (RFC 8461 5.1), cached and shared."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.TXT
import dns.resolver

from ...expiring import ExpiringMap
from ...resolver import describe_dns_error
from .cache import StsCache
from .fetch import fetch_policy, https_context
from .policy import (
    NO_POLICY,
    StsError,
    StsLookup,
    StsPolicy,
    StsRecordInvalid,
    normalize_domain,
    select_txt_record,
)

log = logging.getLogger("relaymail.mta_sts")


# --- The resolver ----------------------------------------------------------------------


class StsResolver:
    """MTA-STS lookups for deliveries: TXT check, durable cache, fetch (see the docstring)."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        cache: StsCache,
        *,
        https_port: int = 443,
        ssl_context: ssl.SSLContext | None = None,
        fetch_timeout: float = 60.0,
        negative_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self._cache = cache
        self._https_port = https_port
        self._ssl_context = ssl_context or https_context()
        self._fetch_timeout = fetch_timeout
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._in_flight: dict[str, asyncio.Task[StsLookup]] = {}
        self._remembered: ExpiringMap[str, StsLookup] = ExpiringMap()

    async def lookup(self, domain: str) -> StsLookup:
        """The MTA-STS policy in force for `domain` (an ASCII or IDNA domain name)."""
        try:
            domain = normalize_domain(domain)
        except ValueError as exc:
            return StsLookup(None, error=f"no MTA-STS for {domain!r}: {exc}")
        if not domain:
            return NO_POLICY  # an address literal: no domain to have a policy
        remembered = self._remembered.get(domain, self._clock())
        if remembered is not None:
            return remembered
        task = self._in_flight.get(domain)
        if task is None:
            task = asyncio.create_task(self._lookup(domain), name=f"mta-sts {domain}")
            self._in_flight[domain] = task
            task.add_done_callback(lambda done: self._forget_task(domain, done))
        # Shielded: one caller giving up must not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    def forget(self, domain: str) -> None:
        """Drop what memory holds for `domain` (not the durable cache)."""
        self._remembered.pop(domain.rstrip(".").lower())

    async def close(self) -> None:
        """Cancel lookups in flight; the cache belongs to the caller."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_task(self, domain: str, task: asyncio.Task[StsLookup]) -> None:
        if self._in_flight.get(domain) is task:
            del self._in_flight[domain]

    async def _lookup(self, domain: str) -> StsLookup:
        result = await self._resolve(domain)
        now = self._clock()
        if result.policy is None or result.result_type is not None:
            until = now + self._negative_ttl
            if result.policy is not None:
                until = min(until, result.policy.expires_at)
            self._remembered.put(domain, result, until, now)
        if result.error:
            log.warning("domain=%s mta-sts=%s: %s", domain, result.mode.value, result.error)
        return result

    async def _resolve(self, domain: str) -> StsLookup:
        cached = await self._cache.get_async(domain)
        if cached is not None and cached.is_expired(self._clock()):
            await self._cache.delete_async(domain)
            cached = None
        try:
            policy_id = await self._txt_id(domain)
        except StsError as exc:
            return StsLookup(cached, from_cache=cached is not None, error=exc.reason)
        if policy_id is None:
            # No TXT record: the cached policy stays in force until it expires (5.1).
            return StsLookup(cached, from_cache=cached is not None)
        if cached is not None and cached.policy_id == policy_id and not self._stale(cached):
            return StsLookup(cached, from_cache=True)
        try:
            policy = await fetch_policy(
                domain,
                self._resolver,
                policy_id=policy_id,
                https_port=self._https_port,
                ssl_context=self._ssl_context,
                timeout=self._fetch_timeout,
                clock=self._clock,
            )
        except StsError as exc:
            if cached is None:
                return StsLookup(None, error=exc.reason, result_type=exc.result_type)
            return StsLookup(
                cached,
                from_cache=True,
                error=f"{exc.reason}; the cached policy (id {cached.policy_id}) stays in force",
                result_type=exc.result_type,
            )
        await self._cache.put_async(domain, policy)
        if cached is None or cached.text != policy.text:
            log.info(
                "domain=%s mta-sts policy id=%s mode=%s mx=%s max_age=%d",
                domain, policy.policy_id, policy.mode.value, ",".join(policy.mx), policy.max_age,
            )  # fmt: skip
        return StsLookup(policy)

    async def _txt_id(self, domain: str) -> str | None:
        name = f"_mta-sts.{domain}"
        try:
            answer = await self._resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return None
        except dns.exception.DNSException as exc:
            raise StsError(f"TXT lookup for {name} failed: {describe_dns_error(exc)}") from None
        texts = [
            b"".join(rdata.strings).decode("utf-8", errors="replace")
            for rdata in answer
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        ]
        try:
            return select_txt_record(texts)
        except StsRecordInvalid as exc:
            raise StsRecordInvalid(f"{name}: {exc.reason}; treated as no policy") from None

    def _stale(self, policy: StsPolicy) -> bool:
        return self._clock() >= policy.fetched_at + policy.max_age / 2
