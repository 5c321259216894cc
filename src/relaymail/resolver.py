"""Words about names and addresses shared by every lookup: why DNS failed, what an IP is.

Why a DNS lookup failed, in the words an operator can act on:

dnspython raises one `NoNameservers` whether the servers answered SERVFAIL,
answered REFUSED (a resolver whose ACL does not include us), or could not be
reached at all (`Network is unreachable`); the cause sits in the exception's
`errors` list. Every lookup in relaymail (routing, MTA-STS, DANE, TLS-RPT) says
why through `describe_dns_error`, so delivery and `relaymail probe` report the
same cause for the same failure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import dns.exception
import dns.message
import dns.resolver


def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def describe_dns_error(exc: dns.exception.DNSException) -> str:
    """The cause of `exc`, per server where dnspython kept one: never a bare "SERVFAIL"."""
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
