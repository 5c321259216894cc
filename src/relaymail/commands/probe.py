"""`relaymail probe DOMAIN`: how mail to a domain would go, without sending any.

Resolves the next hops like a delivery, then at each address runs the session
up to and including STARTTLS, and shows what the policy would decide there.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..delivery import DeliveryEngine
from ..delivery.engine import HostInspection
from ..routing import RoutingError
from ..tls.mta_sts import StsPolicy
from ..tls.policy import Level


@dataclass(frozen=True, slots=True)
class ProbeReport:
    domain: str
    level: Level
    level_source: str
    tempfail_fallback: bool
    routing_error: str | None = None
    routing_permanent: bool = False  # the domain has no next hop for good (NXDOMAIN, null MX)
    hosts: tuple[HostInspection, ...] = field(default_factory=tuple)
    sts: StsPolicy | None = None
    tlsrpt: str | None = None  # the rua URIs, or why there are none

    @property
    def reachable(self) -> bool:
        return any(h.decision is not None and not h.decision.action.gives_up for h in self.hosts)


async def probe_domain(domain: str, config: Config) -> ProbeReport:
    from ..message import domain_of

    name = domain_of(f"probe@{domain}")
    engine = DeliveryEngine(config)
    try:
        level, source = config.tls.policy.level_for(name)
        fallback = config.tls.tempfail_fallback
        try:
            hops = await engine.router.next_hops(name)
        except RoutingError as exc:
            return ProbeReport(name, level, source, fallback, exc.reason, exc.permanent)
        plan = await engine.plan(name, hops)
        inspections = []
        for hop, policy in plan.hosts:
            if isinstance(policy, str) or not hop.addresses:
                error = policy if isinstance(policy, str) else hop.lookup_error
                inspections.append(_ready(HostInspection(hop, "-", error=error)))
            else:
                inspections += [engine.inspect_host(name, hop, ip, policy) for ip in hop.addresses]
        hosts = tuple(await asyncio.gather(*inspections))
        rua = await _tlsrpt(name, engine)
        return ProbeReport(name, plan.level, plan.source, fallback, hosts=hosts, sts=plan.sts,
                           tlsrpt=rua)  # fmt: skip
    finally:
        await engine.close()


async def _ready(inspection: HostInspection) -> HostInspection:
    return inspection


async def _tlsrpt(domain: str, engine: DeliveryEngine) -> str:
    from ..tls.reporting import TlsRptLookupError, lookup_tlsrpt

    try:
        record = await lookup_tlsrpt(domain, engine.resolver)
    except TlsRptLookupError as exc:
        return f"lookup failed: {exc}"
    return ", ".join(record.rua) if record else "none published"


def report_json(report: ProbeReport) -> dict[str, Any]:
    return {
        "domain": report.domain,
        "policy": {
            "level": report.level.value,
            "source": report.level_source,
            "tempfail_fallback": report.tempfail_fallback,
        },
        "routing_error": report.routing_error,
        "mta_sts": _sts_json(report.sts),
        "tlsrpt_rua": report.tlsrpt,
        "hosts": [_host_json(h) for h in report.hosts],
    }


def _sts_json(sts: StsPolicy | None) -> dict[str, Any] | None:
    if sts is None:
        return None
    return {
        "mode": sts.mode.value,
        "mx": list(sts.mx),
        "max_age": sts.max_age,
        "id": sts.policy_id,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sts.fetched_at)),
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
        "level": h.level.value if h.level else None,
        "level_source": h.level_source,
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
    sts = _sts_json(report.sts)
    console.print("MTA-STS: " + (escape(json.dumps(sts)) if sts else "no policy in force"))
    console.print(f"TLS-RPT rua: {escape(report.tlsrpt or '-')}")
    table = Table(show_lines=True)
    for column in ("host", "ip", "level", "EHLO", "STARTTLS", "TLS", "certificate", "decision"):
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
        level = f"{h.level.value}\n{h.level_source}" if h.level else "-"
        cells = (h.hop.label, h.ip, level, caps, starttls, tls, cert_text)
        table.add_row(*(escape(cell) for cell in cells), decision)
    console.print(table)
