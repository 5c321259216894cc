"""SMTP TLS Reporting (RFC 8460): count TLS outcomes per day, send one report per domain.

Theory of operation
-------------------
Delivery turns each new SMTP session's STARTTLS step into a `TlsEvent`
(`session_event()` does the mapping from relaymail's own policy events) and
hands batches of them to `TlsReportStore.record()`. The store keeps no event
rows: it adds them up at once into counters keyed like the report itself
(UTC day, policy domain, policy type, policy strings, MX patterns; and for
failures result type, sending IP, MX name, EHLO name, IP and reason), so the
database grows with the number of distinct outcomes, not with the mail volume.
Concurrent record() calls share one transaction (a small group commit on a
worker thread), so calling it after every delivery costs the event loop
almost nothing.

Once a day is over, `send_daily_reports()` looks up `_smtp._tls.<domain>`
(RFC 8460 section 3) for each domain with data, and sends that domain's report
(section 4.4 JSON, gzipped, section 5.2) to every rua URI: `mailto:` as a
multipart/report message (section 5.3) handed to relaymail's own queue,
`https:` as a POST (section 5.4) to the address our own resolver gives for the
URI's host, TLS verified against the host name. Which destinations took the
report is stored, under a report id fixed at the first attempt: calling again
(after a restart, or to retry a failed POST) sends only what is still owed,
and a retried POST carries the same report id so the receiver can drop
duplicates.

Counting is what the report needs and nothing more: reasons are capped in
length, because a reason that embeds a server's changing text would otherwise
make a new failure row per session.
"""

from __future__ import annotations

from .events import TlsEvent, session_event, utc_day
from .record import (
    TlsRptLookupError,
    TlsRptRecord,
    lookup_tlsrpt,
    parse_tlsrpt_record,
    select_tlsrpt_record,
)
from .report import (
    DomainSummary,
    FailureDetail,
    PolicySummary,
    TlsReport,
    report_filename,
    report_json,
)
from .send import (
    MEDIA_TYPE,
    DestinationResult,
    Enqueue,
    ReportMail,
    ReportOutcome,
    build_report_mail,
    post_report,
    preview_reports,
    send_daily_reports,
)
from .store import DB_FILENAME, ReportProgress, ReportState, TlsReportStore

__all__ = [
    "DB_FILENAME",
    "MEDIA_TYPE",
    "DestinationResult",
    "DomainSummary",
    "Enqueue",
    "FailureDetail",
    "PolicySummary",
    "ReportMail",
    "ReportOutcome",
    "ReportProgress",
    "ReportState",
    "TlsEvent",
    "TlsReport",
    "TlsReportStore",
    "TlsRptLookupError",
    "TlsRptRecord",
    "build_report_mail",
    "lookup_tlsrpt",
    "parse_tlsrpt_record",
    "post_report",
    "preview_reports",
    "report_filename",
    "report_json",
    "select_tlsrpt_record",
    "send_daily_reports",
    "session_event",
    "utc_day",
]
