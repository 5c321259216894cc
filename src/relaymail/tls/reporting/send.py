"""Sending a report to its rua URIs: mailto: through the queue (RFC 8460 5.3), https: POST (5.4)."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from ...errors import AddressError, RelaymailError
from ...message import Envelope, check_address
from ...mime import Part, multipart_report
from ...resolver import AddressLookup, is_ip, lookup_addresses
from .events import utc_day
from .record import TlsRptLookupError, lookup_tlsrpt
from .report import TlsReport, report_json
from .store import ReportState, TlsReportStore

if TYPE_CHECKING:
    import httpx  # imported where used: `deliver` and the daemon start without it

log = logging.getLogger("relaymail.tlsrpt")

MEDIA_TYPE = "application/tlsrpt+gzip"  # RFC 8460 5.2 / 6.4
# Reports are sent to this many domains at once.
SEND_CONCURRENCY = 10


# ---------------------------------------------------------------------------
# Email transport (RFC 8460 5.3)


@dataclass(frozen=True, slots=True)
class ReportMail:
    envelope: Envelope
    data: bytes  # canonical: CRLF, not dot-stuffed


def build_report_mail(
    report: TlsReport, to: Sequence[str], *, from_address: str, now: datetime
) -> ReportMail:
    """The multipart/report message of RFC 8460 5.3 carrying `report`, for `to`."""
    if not to:
        raise ValueError("a report needs at least one recipient")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    attachment = base64.encodebytes(report.gzipped()).replace(b"\n", b"\r\n")
    text = (
        f"This is an aggregate TLS report (RFC 8460) from {report.submitter}\r\n"
        f"for {report.domain}, covering {report.day.isoformat()} (UTC).\r\n"
    ).encode()
    head = [
        f"From: <{from_address}>",
        f"To: {', '.join(f'<{a}>' for a in to)}",
        f"Date: {format_datetime(now.astimezone(UTC))}",
        f"Message-ID: <{report.report_id}>",
        # Folded as in the RFC's example; unfolded it is the one-line form of 5.3.
        f"Subject: Report Domain: {report.domain}",
        f" Submitter: {report.submitter}",
        f" Report-ID: <{report.report_id}>",
        f"TLS-Report-Domain: {report.domain}",
        f"TLS-Report-Submitter: {report.submitter}",
        "Auto-Submitted: auto-generated",
        # RFC 8460 5.3: reports MUST be delivered despite TLS failures (the very
        # failures they report); RFC 8689 is how a message asks for that.
        "TLS-Required: No",
    ]
    parts = [
        Part(
            ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"], text
        ),
        Part(
            [
                f"Content-Type: {MEDIA_TYPE}",
                "Content-Transfer-Encoding: base64",
                "Content-Disposition: attachment;",
                f'\tfilename="{report.filename}"',
            ],
            attachment,
        ),
    ]
    data = multipart_report(head, '"tlsrpt"', parts, boundary_prefix="tlsrpt")
    return ReportMail(Envelope(from_address, tuple(to)), data)


# ---------------------------------------------------------------------------
# Sending

Enqueue = Callable[[Envelope, bytes], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class DestinationResult:
    uri: str
    ok: bool
    detail: str
    permanent: bool = False  # a failure that trying again cannot fix (a bad URI)


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What send_daily_reports did for one domain."""

    domain: str
    day: date
    state: ReportState | None  # None: the TLSRPT lookup failed for now; tried again next time
    report_id: str | None = None
    destinations: tuple[DestinationResult, ...] = ()  # attempted this time
    detail: str = ""
    # Another node holds the claim on sending it (state None: it is theirs for now).
    claimed_by: str | None = None


def _mailto_addresses(uri: str) -> list[str]:
    """The addresses of a mailto: URI (RFC 6068); ValueError if there are none usable."""
    path = urllib.parse.urlsplit(uri).path
    addresses = [urllib.parse.unquote(a).strip() for a in path.split(",") if a.strip()]
    if not addresses:
        raise ValueError("no address")
    for address in addresses:
        check_address(address)
        if not address.isascii():  # the report mail is 7-bit; no SMTPUTF8 for it
            raise ValueError(f"{address!r}: not an ASCII address")
    return addresses


async def post_report(
    uri: str,
    body: bytes,
    resolver: dns.asyncresolver.Resolver,
    client: httpx.AsyncClient,
) -> DestinationResult:
    """POST a gzipped report to an https: rua (RFC 8460 5.4); any 2xx is success.

    The host is looked up with `resolver` (the MTA's own), the connection goes
    to the address, and the certificate is checked against the host name
    (SNI and Host carry the name). Addresses are tried in turn until one
    connects; once a request may have reached the server there is no second try.
    """
    import httpx

    url = httpx.URL(uri)
    if url.scheme != "https" or not url.raw_host:
        return DestinationResult(uri, False, "not an https URL with a host", permanent=True)
    host = url.raw_host.decode("ascii")
    literal = is_ip(host)
    found = AddressLookup((host,)) if literal else await lookup_addresses(resolver, host)
    if found.error is not None:
        return DestinationResult(uri, False, found.error)
    addresses = found.addresses
    authority = host if url.port is None else f"{host}:{url.port}"
    headers = {"Host": authority, "Content-Type": MEDIA_TYPE}
    failures = []
    for address in addresses:
        request = client.build_request(
            "POST",
            url.copy_with(host=address),
            headers=headers,
            content=body,
            extensions={} if literal else {"sni_hostname": host},
        )
        try:
            # Streamed and closed unread: the receiver's body is of no interest.
            response = await client.send(request, stream=True)
            await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failures.append(f"{address}: {str(exc) or type(exc).__name__}")
            continue
        except httpx.HTTPError as exc:
            return DestinationResult(uri, False, f"{address}: {str(exc) or type(exc).__name__}")
        if response.is_success:
            return DestinationResult(uri, True, f"{address}: HTTP {response.status_code}")
        return DestinationResult(
            uri, False, f"{address}: HTTP {response.status_code} {response.reason_phrase}"
        )
    return DestinationResult(uri, False, "; ".join(failures))


async def send_daily_reports(
    store: TlsReportStore,
    day: date,
    resolver: dns.asyncresolver.Resolver,
    enqueue: Enqueue,
    *,
    organization_name: str,
    submitter: str,
    contact_info: str | None = None,
    from_address: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    http_timeout: float = 60.0,
    clock: Callable[[], float] = time.time,
    node: str | None = None,
) -> list[ReportOutcome]:
    """Send the report of every domain with sessions on `day` to its rua URIs.

    Call it after `day` has ended (UTC); calling again sends only what is still
    owed (domains whose lookup failed, https destinations that refused), so a
    restart or a periodic retry never sends a report twice to a destination
    that took it. `enqueue` queues a message (Scheduler.enqueue); `ssl_context`
    verifies https receivers (default: the system's trust store).

    Several nodes on one store (`[queue] backend = "postgresql"`) may all call it: each
    report is claimed by one `node` (default: the host name) before it is sent, and a
    report another node holds is left to it (`ReportOutcome.claimed_by`).
    """
    import httpx

    if day >= utc_day(clock()):
        raise ValueError(f"{day} is not over yet (UTC); its report would be incomplete")
    contact = contact_info or f"postmaster@{submitter}"
    me = node or socket.gethostname()
    sender = from_address or f"noreply-smtp-tls-reporting@{submitter}"
    slots = asyncio.Semaphore(SEND_CONCURRENCY)
    async with (
        store.sending,
        httpx.AsyncClient(
            verify=ssl_context or ssl.create_default_context(),
            timeout=http_timeout,
            trust_env=False,  # we connect to the address we resolved, never via a proxy
            follow_redirects=False,
        ) as client,
    ):

        async def one(domain: str) -> ReportOutcome:
            async with slots:
                holder = await store.db.run(store.claim, day, domain, me, clock())
                if holder != me:
                    return ReportOutcome(domain, day, None, detail=f"being sent by {holder}",
                                         claimed_by=holder)  # fmt: skip
                try:
                    return await _send_domain(
                        store, day, domain, resolver, enqueue, client,
                        organization_name=organization_name, submitter=submitter,
                        contact_info=contact, from_address=sender, clock=clock,
                    )  # fmt: skip
                finally:
                    await store.db.run(store.release, day, domain, me)

        domains = await store.db.run(store.domains, day)
        return list(await asyncio.gather(*(one(d) for d in domains)))


async def _send_domain(
    store: TlsReportStore,
    day: date,
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    enqueue: Enqueue,
    client: httpx.AsyncClient,
    *,
    organization_name: str,
    submitter: str,
    contact_info: str,
    from_address: str,
    clock: Callable[[], float],
) -> ReportOutcome:
    # Read under the claim: a node that sent it just before has settled it by now.
    row = await store.db.run(store.progress, day, domain)
    if row is not None and row.state is not ReportState.OPEN:
        return ReportOutcome(domain, day, row.state, detail="already done")
    try:
        record = await lookup_tlsrpt(domain, resolver)
    except TlsRptLookupError as exc:
        log.warning("tlsrpt domain=%s day=%s: %s; will try again", domain, day, exc)
        return ReportOutcome(domain, day, None, detail=str(exc))
    if record is None:
        detail = f"no usable TLSRPT record at _smtp._tls.{domain}"
        await store.db.run(store.close_report, day, domain, ReportState.NO_RECORD, detail, clock())
        return ReportOutcome(domain, day, ReportState.NO_RECORD, detail=detail)
    supported = [u for u in dict.fromkeys(record.rua) if _scheme(u) in ("mailto", "https")]
    if not supported:
        detail = f"no mailto: or https: URI in the TLSRPT record of {domain}"
        await store.db.run(store.close_report, day, domain, ReportState.NO_RECORD, detail, clock())
        return ReportOutcome(domain, day, ReportState.NO_RECORD, detail=detail)
    row = await store.db.run(store.open_report, day, domain, submitter, clock())
    report_id = row.report_id
    summary = await store.db.run(store.summary, day, domain)
    report = TlsReport(
        day, domain, submitter, row.token,
        report_json(summary, organization_name=organization_name, contact_info=contact_info,
                    report_id=report_id),
    )  # fmt: skip
    body = report.gzipped()
    results: list[DestinationResult] = []
    for uri in supported:  # a URI given twice gets one copy
        if uri in row.delivered:
            continue
        result = await _deliver_to(
            uri, report, body, resolver, enqueue, client, from_address, clock
        )
        log.info(
            "tlsrpt domain=%s day=%s report-id=%s to=%s %s: %s",
            domain, day, report_id, uri, "sent" if result.ok else "failed", result.detail,
        )  # fmt: skip
        if result.ok:
            await store.db.run(store.mark_delivered, day, domain, uri, clock())
        results.append(result)
    owed = [r for r in results if not r.ok and not r.permanent]
    if owed:
        return ReportOutcome(domain, day, ReportState.OPEN, report_id, tuple(results))
    delivered = len(row.delivered) + sum(r.ok for r in results)
    detail = f"sent to {delivered} of {len(record.rua)} rua URIs"
    await store.db.run(store.close_report, day, domain, ReportState.SENT, detail, clock())
    return ReportOutcome(domain, day, ReportState.SENT, report_id, tuple(results), detail)


def _scheme(uri: str) -> str:
    return uri.partition(":")[0].lower()


async def _deliver_to(
    uri: str,
    report: TlsReport,
    body: bytes,
    resolver: dns.asyncresolver.Resolver,
    enqueue: Enqueue,
    client: httpx.AsyncClient,
    from_address: str,
    clock: Callable[[], float],
) -> DestinationResult:
    if _scheme(uri) == "https":
        return await post_report(uri, body, resolver, client)
    try:
        addresses = _mailto_addresses(uri)
    except (ValueError, AddressError) as exc:
        return DestinationResult(uri, False, f"unusable mailto URI: {exc}", permanent=True)
    mail = build_report_mail(
        report, addresses, from_address=from_address, now=datetime.fromtimestamp(clock(), UTC)
    )
    try:
        queued = await enqueue(mail.envelope, mail.data)
    except RelaymailError as exc:  # QueueFull: the next call tries again
        return DestinationResult(uri, False, f"could not queue the report: {exc}")
    return DestinationResult(uri, True, f"queued as {queued}")


# ---------------------------------------------------------------------------
# For the CLI


def preview_reports(
    store: TlsReportStore,
    day: date | None = None,
    domain: str | None = None,
    *,
    organization_name: str,
    contact_info: str,
    clock: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """The reports `day` (default: today, UTC, so far) would produce, as JSON objects.

    Blocking (reads SQLite); for `relaymail tlsrpt show [DOMAIN]`. The report
    id is the one assigned when sending began, else "(not sent)".
    """
    day = day or utc_day(clock())
    domains = [domain] if domain is not None else store.domains(day)
    reports = []
    for name in domains:
        summary = store.summary(day, name)
        if not summary.policies:
            continue
        row = store.progress(day, name)
        reports.append(
            report_json(
                summary,
                organization_name=organization_name,
                contact_info=contact_info,
                report_id=row.report_id if row is not None and row.report_id else "(not sent)",
            )
        )
    return reports
