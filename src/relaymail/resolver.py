"""Words about names and addresses shared by every lookup: why DNS failed, what an IP is,
which configured entry governs a domain.

Why a DNS lookup failed, in the words an operator can act on:

dnspython raises one `NoNameservers` whether the servers answered SERVFAIL,
answered REFUSED (a resolver whose ACL does not include us), or could not be
reached at all (`Network is unreachable`); the cause sits in the exception's
`errors` list. Every lookup in relaymail (routing, MTA-STS, DANE, TLS-RPT) says
why through `describe_dns_error`, so delivery and `relaymail probe` report the
same cause for the same failure.

The TLS policy table looks domains up here, and `sendmail` loads it with the
configuration: dnspython (about 0.1 s to import) is loaded only by the
functions that describe its errors, which run after a lookup has loaded it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.exception

T = TypeVar("T")


@functools.lru_cache(maxsize=4096)  # asked of each hop of each delivery; names are few
def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def governing_key(entries: Mapping[str, T], domain: str) -> str | None:
    """The key of `entries` that speaks for `domain`: the domain itself, else the nearest
    parent entry (".example.com" stands for every name below example.com), else None."""
    if domain in entries:
        return domain
    dot = domain.find(".")
    while dot >= 0:  # each parent, nearest first: ".b.c", then ".c"
        suffix = domain[dot:]
        if suffix in entries:
            return suffix
        dot = domain.find(".", dot + 1)
    return None


@dataclass(frozen=True, slots=True)
class AddressLookup:
    """A host's addresses, IPv6 first (RFC 6724 prefers it), or why there are none."""

    addresses: tuple[str, ...]
    error: str | None = None  # set exactly when `addresses` is empty


async def lookup_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> AddressLookup:
    """AAAA and A for `host`, asked together; the one address lookup of every DNS client.

    A failed query for one family does not hide the other's addresses; with none at
    all, a real failure (SERVFAIL, timeout) is reported before "no address records".
    """
    import asyncio

    (v6, v6_error), (v4, v4_error) = await asyncio.gather(
        _address_records(resolver, host, "AAAA"), _address_records(resolver, host, "A")
    )
    if v6 or v4:
        return AddressLookup(v6 + v4)
    return AddressLookup((), v6_error or v4_error or f"{host} has no address records")


async def _address_records(
    resolver: dns.asyncresolver.Resolver, host: str, rdtype: str
) -> tuple[tuple[str, ...], str | None]:
    import dns.exception
    import dns.resolver

    try:
        answer = await resolver.resolve(host, rdtype, search=False)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return (), None
    except dns.exception.DNSException as exc:
        return (), f"{rdtype} lookup for {host} failed: {describe_dns_error(exc)}"
    return tuple(rdata.to_text() for rdata in answer), None


def describe_dns_error(exc: dns.exception.DNSException) -> str:
    """The cause of `exc`, per server where dnspython kept one: never a bare "SERVFAIL"."""
    import dns.resolver

    if isinstance(exc, dns.resolver.LifetimeTimeout):
        servers = _unique(_server(error) for error in exc.kwargs.get("errors") or ())
        # An unconnected UDP socket never hears ICMP port-unreachable: a server that
        # is down and one that drops queries both look like silence.
        return f"timed out: no answer from {', '.join(servers)}" if servers else "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        causes = _unique(_cause(error) for error in exc.kwargs.get("errors") or ())
        return "; ".join(causes) if causes else "no name server to ask"
    return str(exc) or type(exc).__name__


def _server(error: tuple[Any, ...]) -> str:
    # (str(nameserver), tcp, port, exception or rcode text, response); "Do53:127.0.0.1@53".
    return str(error[0]).removeprefix("Do53:")


def _cause(error: tuple[Any, ...]) -> str:
    import dns.message

    server, why = _server(error), error[3] if len(error) > 3 else None
    response = error[4] if len(error) > 4 else None
    if isinstance(why, str):  # an rcode: SERVFAIL, REFUSED, NOTIMP...
        # RFC 8914 Extended DNS Errors say why a validating resolver failed.
        details = (
            [option.to_text() for option in response.extended_errors()]
            if isinstance(response, dns.message.Message)
            else []
        )
        return f"{server} answered {why}" + (f" ({'; '.join(details)})" if details else "")
    if isinstance(why, OSError):
        return f"{server}: {why.strerror or why}"
    return f"{server}: {why or 'no usable answer'}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
