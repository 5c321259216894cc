"""From a recipient domain to the ordered list of next hops to try.

Static routes from [routes] win (a smarthost or transport map); otherwise DNS:
MX by preference with random order among equals (RFC 5321 5.1), the implicit
MX when there is none, the null MX of RFC 7505. Delivery code sees only
NextHop values, never DNS records.

A [routes] host is the operator's own name for a machine, so it resolves as
the system does (/etc/hosts, then DNS: Exim's manualroute and Postfix's
relayhost do the same), unless [dns] names servers; MX hosts are the
recipient domain's names and always come from DNS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import logging
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from .config import DnsSettings, HostPort, Scheme
from .errors import RelaymailError
from .resolver import describe_dns_error, governing_key, is_ip, lookup_addresses

log = logging.getLogger("relaymail.routing")


class HopSource(enum.Enum):
    ROUTE = "route"
    MX = "mx"
    IMPLICIT_MX = "implicit-mx"
    LITERAL = "address-literal"


@dataclass(frozen=True, slots=True)
class NextHop:
    """One server to try: its name (what `verify` checks), port and addresses in order."""

    name: str
    port: int
    addresses: tuple[str, ...]
    source: HopSource
    preference: int = 0
    lookup_error: str | None = None  # why `addresses` is empty
    scheme: Scheme = Scheme.SMTP  # SMTPS only for a [routes] entry that says smtps://

    @property
    def label(self) -> str:
        host = f"[{self.name}]" if ":" in self.name else self.name
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Destination:
    """What per-destination limits count: a [routes] entry (all the domains it carries
    share it, as they share its hosts), else the recipient domain."""

    name: str  # the [routes] key ("*", ".example.com", a domain) or the recipient domain
    routed: bool

    @property
    def label(self) -> str:
        return f"route {self.name}" if self.routed else self.name


class RoutingError(RelaymailError):
    """No next hop: permanent (bounce) or temporary (defer)."""

    def __init__(self, reason: str, *, permanent: bool, status: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.status = status  # RFC 3463 enhanced status for the DSN


def make_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    if settings.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(server.host, server.port)
            for server in settings.nameservers
        ]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = settings.timeout
    resolver.timeout = min(settings.timeout, 5.0)
    return resolver


class Router:
    def __init__(
        self,
        routes: Mapping[str, tuple[HostPort, ...]],
        resolver: dns.asyncresolver.Resolver,
        mx_port: int = 25,
        *,
        system_lookup: bool = False,
        max_mx_addresses: int = 5,
    ) -> None:
        self._routes = routes
        self._resolver = resolver
        self._mx_port = mx_port
        self._system_lookup = system_lookup  # route hosts through getaddrinfo()
        self._max_mx_addresses = max_mx_addresses

    def route_for(self, domain: str) -> tuple[HostPort, ...] | None:
        """The static route for `domain`: exact, then '.parent' entries, then '*'."""
        key = governing_key(self._routes, domain)
        return self._routes[key] if key is not None else self._routes.get("*")

    def destination(self, domain: str) -> Destination:
        """The destination `domain` counts against; pure, no DNS."""
        if domain.startswith("["):
            return Destination(domain, False)  # an address literal is never routed
        key = governing_key(self._routes, domain)
        if key is None and "*" in self._routes:
            key = "*"
        return Destination(domain, False) if key is None else Destination(key, True)

    async def next_hops(self, domain: str) -> list[NextHop]:
        if domain.startswith("[") and domain.endswith("]"):
            return [_literal_hop(domain, self._mx_port)]
        route = self.route_for(domain)
        if route is not None:
            if len(route) == 1:  # the usual route: no task and no gathering for one lookup
                return [await self._route_hop(route[0])]
            return list(await asyncio.gather(*(self._route_hop(t) for t in route)))
        return await self._mx_hops(domain)

    async def _route_hop(self, target: HostPort) -> NextHop:
        hop = await self._hop(target.host, target.port, HopSource.ROUTE)
        # replace() costs ten microseconds, and most routes keep the default.
        if hop.scheme is target.scheme:
            return hop
        return dataclasses.replace(hop, scheme=target.scheme)

    async def _mx_hops(self, domain: str) -> list[NextHop]:
        try:
            answer = await self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise RoutingError(
                f"the domain {domain} does not exist (NXDOMAIN)", permanent=True, status="5.1.2"
            ) from None
        except dns.resolver.NoAnswer:
            hop = await self._hop(domain, self._mx_port, HopSource.IMPLICIT_MX)
            if not hop.addresses and hop.lookup_error is None:
                raise RoutingError(
                    f"{domain} has no MX and no address records", permanent=True, status="5.1.2"
                ) from None
            return self._capped(domain, [hop], 1)
        except dns.exception.DNSException as exc:
            why = describe_dns_error(exc)
            raise RoutingError(
                f"MX lookup for {domain} failed: {why}", permanent=False, status="4.4.3"
            ) from None
        records = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in answer]
        hosts = [(pref, name) for pref, name in records if name not in ("", ".")]
        if not hosts:
            raise RoutingError(
                f"{domain} publishes a null MX (RFC 7505): it accepts no mail",
                permanent=True,
                status="5.1.10",
            )
        random.shuffle(hosts)  # random among equal preferences; sort below is stable
        hosts.sort(key=lambda h: h[0])
        # Resolve in slices of the address cap, in MX order, until it is reached: a domain
        # with fifty MX hosts costs a few lookups, not a hundred.
        hops: list[NextHop] = []
        limit = self._max_mx_addresses
        while hosts[len(hops) :] and sum(len(h.addresses) for h in hops) < limit:
            batch = hosts[len(hops) : len(hops) + limit]
            hops += await asyncio.gather(
                *(self._hop(name, self._mx_port, HopSource.MX, pref) for pref, name in batch)
            )
        return self._capped(domain, hops, len(hosts))

    def _capped(self, domain: str, hops: list[NextHop], hosts: int) -> list[NextHop]:
        kept = cap_addresses(hops, self._max_mx_addresses)
        tried = sum(len(h.addresses) for h in kept)
        if len(kept) < hosts or tried < sum(len(h.addresses) for h in hops):
            log.info(
                "domain=%s: trying %d address(es) of %d of its %d MX host(s) "
                "(delivery.max_mx_addresses = %d)",
                domain, tried, len(kept), hosts, self._max_mx_addresses,
            )  # fmt: skip
        return kept

    async def _hop(self, host: str, port: int, source: HopSource, preference: int = 0) -> NextHop:
        if is_ip(host):
            return NextHop(host, port, (host,), source, preference)
        if source is HopSource.ROUTE and self._system_lookup:
            return await _system_hop(host, port)
        found = await lookup_addresses(self._resolver, host)
        return NextHop(host, port, found.addresses, source, preference, found.error)


async def _system_hop(host: str, port: int) -> NextHop:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return NextHop(host, port, (), HopSource.ROUTE, lookup_error=f"{host}: {exc.strerror}")
    # The system's order (RFC 6724 address selection), each address once.
    addresses = dict.fromkeys(str(info[4][0]) for info in infos)
    return NextHop(host, port, tuple(addresses), HopSource.ROUTE)


def cap_addresses(hops: list[NextHop], limit: int) -> list[NextHop]:
    """The hops in order with at most `limit` addresses in all (Postfix counts addresses).

    A host whose lookup failed stays (it costs no connection and its reason is reported);
    hosts after the limit is reached are dropped, the last one kept may lose addresses.
    """
    kept: list[NextHop] = []
    left = limit
    for hop in hops:
        if left == 0:
            break
        if len(hop.addresses) > left:
            hop = dataclasses.replace(hop, addresses=hop.addresses[:left])
        kept.append(hop)
        left -= len(hop.addresses)
    return kept


def _literal_hop(domain: str, port: int) -> NextHop:
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        raise RoutingError(
            f"{domain} is not a valid address literal", permanent=True, status="5.1.2"
        ) from None
    return NextHop(address, port, (address,), HopSource.LITERAL)
