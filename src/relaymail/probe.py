"""`relaymail probe DOMAIN`: how mail to a domain would go, without sending any.

Resolves the next hops like a delivery, then at each address runs the session
up to and including STARTTLS, and shows what the policy would decide there.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .delivery import DeliveryEngine, HostInspection
from .routing import RoutingError
from .tls.policy import Action, Level


@dataclass(frozen=True, slots=True)
class ProbeReport:
    domain: str
    level: Level
    level_source: str
    tempfail_fallback: bool
    routing_error: str | None = None
    hosts: tuple[HostInspection, ...] = field(default_factory=tuple)

    @property
    def reachable(self) -> bool:
        return any(
            h.decision is not None and h.decision.action is not Action.HOST_FAILS
            for h in self.hosts
        )


async def probe_domain(domain: str, config: Config) -> ProbeReport:
    from .message import domain_of

    lookup = domain_of(f"probe@{domain}")
    engine = DeliveryEngine(config)
    level, source = config.tls.policy.level_for(lookup)
    try:
        hops = await engine.router.next_hops(lookup)
    except RoutingError as exc:
        return ProbeReport(lookup, level, source, config.tls.tempfail_fallback, exc.reason)
    inspections = await asyncio.gather(
        *(engine.inspect_host(lookup, hop, ip) for hop in hops for ip in hop.addresses)
    )
    unresolved = [HostInspection(h, "-", error=h.lookup_error) for h in hops if not h.addresses]
    return ProbeReport(
        lookup, level, source, config.tls.tempfail_fallback, None, (*inspections, *unresolved)
    )


def report_json(report: ProbeReport) -> dict[str, Any]:
    return {
        "domain": report.domain,
        "policy": {
            "level": report.level.value,
            "source": report.level_source,
            "tempfail_fallback": report.tempfail_fallback,
        },
        "routing_error": report.routing_error,
        "hosts": [_host_json(h) for h in report.hosts],
    }


def _host_json(h: HostInspection) -> dict[str, Any]:
    cert = h.tls.certificate
    return {
        "host": h.hop.label,
        "ip": h.ip,
        "source": h.hop.source.value,
        "preference": h.hop.preference,
        "greeting": h.greeting,
        "capabilities": sorted(h.capabilities.keywords) if h.capabilities else None,
        "capabilities_after_tls": (
            sorted(h.capabilities_after_tls.keywords) if h.capabilities_after_tls else None
        ),
        "starttls": h.event.value if h.event else None,
        "tls": {
            "used": h.tls.used,
            "version": h.tls.version,
            "cipher": h.tls.cipher,
            "verified": h.tls.verified,
            "verify_error": h.tls.verify_error,
            "certificate": (
                {
                    "subject": cert.subject,
                    "issuer": cert.issuer,
                    "not_after": cert.not_after,
                    "names": list(cert.names),
                }
                if cert
                else None
            ),
        },
        "decision": (
            {"action": h.decision.action.value, "reason": h.decision.reason} if h.decision else None
        ),
        "error": h.error,
    }


def print_report(report: ProbeReport, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report_json(report), indent=2, ensure_ascii=False))
        return
    import shutil

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Wide when piped (rich would assume 80 columns), so log greps see whole reasons.
    console = Console(width=shutil.get_terminal_size((160, 24)).columns)
    fallback = "on" if report.tempfail_fallback else "off"
    console.print(
        f"[bold]{report.domain}[/bold]: policy [bold]{report.level.value}[/bold] "
        f"({escape(report.level_source)}), tempfail_fallback {fallback}"
    )
    if report.routing_error:
        console.print(f"[red]no next hop:[/red] {escape(report.routing_error)}")
        return
    table = Table(show_lines=True)
    for column in ("host", "ip", "EHLO", "STARTTLS", "TLS", "certificate", "decision"):
        table.add_column(column, overflow="fold")
    for h in report.hosts:
        caps = " ".join(sorted(h.capabilities.keywords)) if h.capabilities else "-"
        tls = (
            f"{h.tls.version} {h.tls.cipher}\n"
            + ("verified" if h.tls.verified else f"not verified: {h.tls.verify_error}")
            if h.tls.used
            else "-"
        )
        cert = h.tls.certificate
        cert_text = (
            f"subject {cert.subject}\nissuer {cert.issuer}\nexpires {cert.not_after}"
            if cert
            else "-"
        )
        decision = escape(h.decision.reason) if h.decision else f"[red]{escape(str(h.error))}[/red]"
        starttls = h.event.value if h.event else "-"
        cells = (h.hop.label, h.ip, caps, starttls, tls, cert_text)
        table.add_row(*(escape(cell) for cell in cells), decision)
    console.print(table)
