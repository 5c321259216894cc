"""Which TLS level applies to a domain and to each of its hosts, and why.

The precedence: the configuration's own entry for the domain, then DANE (per
host, RFC 7672 2.2), then MTA-STS (RFC 8461), then the default level. The
lookups happen elsewhere (DNS, HTTPS, each cached); here the precedence is
pure functions of what they found, so each row can be read and tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..routing import HopSource, NextHop
from ..tls.dane import DaneStatus, TlsaLookup
from ..tls.mta_sts import StsMode, StsPolicy
from ..tls.policy import DEFAULT_SOURCE, Level
from .results import AttemptResult

# Published policies speak for the domain's own MX hosts only: a static route or
# a smarthost is the sender's infrastructure, not the recipient domain's.
DNS_HOPS = (HopSource.MX, HopSource.IMPLICIT_MX)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The level for one next hop: the domain's, unless DANE says more for this host."""

    level: Level
    source: str
    dane: TlsaLookup | None = None
    requiretls: bool = False  # for a REQUIRETLS message: the table's own column (requiretls.py)


@dataclass(frozen=True, slots=True)
class HostRefused:
    """The domain's published policies rule this host out; the next host may do."""

    result: AttemptResult
    detail: str


@dataclass(frozen=True, slots=True)
class DomainPlan:
    """What decides a domain's TLS: its level and why, MTA-STS, and whether DANE applies."""

    level: Level
    source: str
    sts: StsPolicy | None = None  # an MTA-STS policy in enforce or testing mode
    dane: bool = False  # each host's TLSA records may decide that host
    # Each host's policy, when planned for `relaymail probe` (str: why the host is unusable).
    hosts: tuple[tuple[NextHop, HostPolicy | str], ...] = ()

    @property
    def policy(self) -> HostPolicy:
        """The domain's own policy, for a host no TLSA record speaks for."""
        return HostPolicy(self.level, self.source)

    def mx_mismatch(self, hop: NextHop) -> str | None:
        """Why `hop` is outside the MTA-STS policy's mx list, or None when it is inside."""
        if self.sts is None or self.sts.matches(hop.name):
            return None
        return f"{hop.name} is not in the MTA-STS policy's mx list ({self.sts.mx})"

    def host(self, tlsa: TlsaLookup | None) -> HostPolicy | HostRefused:
        """DANE before MTA-STS (RFC 7672 2.2): usable TLSA records decide this host alone."""
        if tlsa is None or not self.dane:
            return self.policy
        status = tlsa.status
        if status is DaneStatus.UNUSABLE:
            return HostRefused(AttemptResult.DANE_UNUSABLE, f"TLSA lookup failed: {tlsa.reason}")
        if status is DaneStatus.AUTHENTICATE:
            return HostPolicy(Level.DANE, f"DANE: {tlsa.reason}", tlsa)
        if status is DaneStatus.ENCRYPT:
            return HostPolicy(Level.ENCRYPT, f"DANE without usable records: {tlsa.reason}")
        return self.policy


def published_policies_apply(source: str, hops: Sequence[NextHop], relaxed: bool) -> bool:
    """Whether the domain's DNS-published policies (DANE, MTA-STS) are looked up at all.

    Not when the configuration names the domain itself, not for a static route, and not
    for a message with RFC 8689's `TLS-Required: No` (`relaxed`).
    """
    return source == DEFAULT_SOURCE and hops[0].source in DNS_HOPS and not relaxed


def plan(
    level: Level, source: str, *, published: bool, sts: StsPolicy | None, dane: bool
) -> DomainPlan:
    """The domain's plan from the configured level and what the published policies say.

    `sts` is the MTA-STS policy found (None: none, or not looked up); `dane` whether
    TLSA records are looked up for its hosts. Neither counts unless `published`.
    """
    if not published:
        return DomainPlan(level, source)
    if sts is None or sts.mode is StsMode.NONE:
        return DomainPlan(level, source, dane=dane)
    # RFC 8461 5: an enforce policy makes the domain `verify` with its MX list.
    where = f"MTA-STS {sts.mode.value} (policy id {sts.policy_id})"
    if sts.mode is StsMode.ENFORCE:
        return DomainPlan(Level.VERIFY, where, sts, dane)
    return DomainPlan(level, f"{source}; {where}", sts, dane)
